"""Do the synthetic patches carry tissue? Fidelity of the LDM arms on one fold of a real cohort.

Runs the workflow on the sample sheet given by ``--samples`` with ``config/demo.yaml``'s CPU settings
plus an overlay written here (the cohort, ``--patch-size`` px patches resized to ``--image-size``
px, and VAE / LDM training long enough to learn texture: the ``--vae-*`` / ``--ldm-*`` arguments,
whose defaults fit 30-40 CPU minutes on 2 cores), and asks only for fold 0's fidelity outputs:

* ``fid/reconstruction/fold_0.json``: the fold's VAE on held-back patches (rFID, PSNR, SSIM), the
  floor under any LDM FID;
* ``fid/{ssl,class}/fold_0.json``: the classifier arms' synthetic sets (SSL- and class-conditioned);
* ``fid/{ssl,class}/g0/fold_0.json``: the same LDMs at guidance 0 (unconditional;
  ``fidelity.unconditional: true``), sampled with the same plan and noise;
* ``fid/samples/fold_0.png``: the workflow's real | class | SSL figure.

The figures are the workflow's own (its JSON reports, tabled by ``summarise_fidelity``); nothing is
measured here. Prints rFID, FID, FD-DINO and KID of ``ssl``, ``class`` and guidance 0 side by side,
checks the targets FID(ssl) < FID(class) < FID(guidance 0), and writes to ``--out``: the table
(``fidelity.csv``, ``fidelity.md``, ``table.txt``), one sample grid per set (``grid_ssl.png``,
``grid_class.png``, ``grid_guidance0.png``; cell i of every grid has the same initial noise) and the
workflow's figures. Also prints wall time, CPU minutes (Snakemake and all its jobs) and seconds per rule::

    python benchmarks/bench_fidelity.py --samples ../shared/data/dev-he/samples.csv --out runs/fidbench
    python benchmarks/bench_fidelity.py --samples ... --out /tmp/smoke --vae-steps 20 --ldm-steps 20   # smoke

Measured (dev-he, 16 TMA images, fold 0 of 4: 300 training patches; defaults; 2 shared cores): 36 CPU
min in the jobs; rFID 118 (PSNR 28.1 dB, SSIM 0.87); FID ssl 144, class 151, guidance 0 150 (ssl's LDM) /
155 (class's); KID 0.116 / 0.127 / 0.137 / 0.133; nuclei visible. FID at 300 images is biased and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the table and grids use the package's own helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import benchmark_files, snakemake  # one Snakemake runner for the benchmarks

FOLD = "0"
CONDS = ("ssl", "class")


def overlay(args) -> dict:
    """Settings on top of config/demo.yaml: the given cohort, fold 0's LDM side, longer training."""
    n = len(args.ldm_channels)
    return {
        "demo": {"enabled": False}, "samples": str(args.samples.resolve()),
        "arms": ["real", "real+ssl", "real+class"],  # both conditionings (no classifier is asked for)
        "deploy": {"enabled": False},
        "tiling": {"patch_size": args.patch_size},
        "splits": {"n_folds": args.folds},
        "vae": {"image_size": args.image_size, "block_out_channels": args.vae_channels, "steps": args.vae_steps,
                "batch_size": args.vae_batch_size, "lr": args.vae_lr, "warmup_steps": min(100, args.vae_steps // 10),
                "checkpoint_every": max(1, args.vae_steps // 4), "log_every": max(1, args.vae_steps // 50)},
        "ldm": {"block_out_channels": args.ldm_channels, "layers_per_block": args.ldm_layers,
                "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
                "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
                "steps": args.ldm_steps, "batch_size": args.ldm_batch_size, "lr": args.ldm_lr,
                "warmup_steps": min(100, args.ldm_steps // 10), "ema_decay": args.ema_decay,
                "checkpoint_every": max(1, args.ldm_steps // 4), "log_every": max(1, args.ldm_steps // 50)},
        "sampling": {"guidance": args.guidance, "steps": args.sampling_steps,
                     "synthetic_fraction": args.synthetic_fraction},
        # every training patch of the fold as the real set; the guidance-0 sets beside the guided ones
        "fidelity": {"unconditional": True, "max_real": 100000, "kid_subset_size": args.kid_subset_size},
    }


def targets() -> list[Path]:
    """Fold 0's fidelity outputs, relative to the work dir (as the rules name them)."""
    fid = Path("results") / "fid"
    return [fid / "reconstruction" / f"fold_{FOLD}.json", *(fid / c / f"fold_{FOLD}.json" for c in CONDS),
            *(fid / c / "g0" / f"fold_{FOLD}.json" for c in CONDS), fid / "samples" / f"fold_{FOLD}.png"]


def fidelity_table(results: Path, out: Path) -> pd.DataFrame:
    """The workflow's summary of fold 0's reports (fid/summary.csv would need every fold), in ``out``."""
    from duvflow.ldm.fidelity_table import summarise_fidelity

    fid = results / "fid"
    summarise_fidelity(reports=[str(fid / c / f"fold_{FOLD}.json") for c in CONDS],
                       sweep=[str(fid / c / "g0" / f"fold_{FOLD}.json") for c in CONDS],
                       reconstruction=[str(fid / "reconstruction" / f"fold_{FOLD}.json")],
                       table=str(out / "fidelity.csv"), markdown=str(out / "fidelity.md"))
    return pd.read_csv(out / "fidelity.csv")


def side_by_side(df: pd.DataFrame) -> pd.DataFrame:
    """Metrics as rows, sets as columns (ssl, class, then the guidance-0 sets)."""
    rows = {"FID": "fid", "KID": "kid", "FD-DINO (ssl's space)": "fd_dino", "KID-DINO": "kid_dino",
            "n_real": "n_real", "n_synthetic": "n_synthetic"}
    order = sorted(df["arm"], key=lambda arm: ("@" in arm, arm != "ssl" and not arm.startswith("ssl ")))
    table = df.set_index("arm").loc[order, list(rows.values())].T
    table.index = list(rows)
    table.loc["rFID (VAE floor)"] = df["rfid"].iloc[0]
    return table


def save_grids(results: Path, out: Path, n: int, zoom: int) -> list[Path]:
    """One grid per set; the same manifest rows (same source patch and noise) in each."""
    from PIL import Image

    from duvflow.ldm.common import save_grid
    from duvflow.ldm.figures import select_rows

    syn = results / "synthetic"
    sets = {"ssl": syn / "ssl" / f"fold_{FOLD}", "class": syn / "class" / f"fold_{FOLD}",
            "guidance0": results / "synthetic_guidance" / "ssl" / "g0" / f"fold_{FOLD}"}
    rows = select_rows(pd.read_parquet(sets["ssl"] / "manifest.parquet"), n * n)
    written = []
    for name, folder in sets.items():
        images = []
        for file in rows["file"]:
            with Image.open(folder / file) as im:
                images.append(np.asarray(im.convert("RGB")).repeat(zoom, 0).repeat(zoom, 1))
        written.append(out / f"grid_{name}.png")
        save_grid(np.stack(images), written[-1], ncol=n)
    return written


def verdict(table: pd.DataFrame) -> str:
    fid = table.loc["FID"]
    g0 = [c for c in fid.index if "@ 0" in c]
    ok = fid["ssl"] < fid["class"] < min(fid[c] for c in g0)
    return (f"target FID(ssl) < FID(class) < FID(guidance 0): {'MET' if ok else 'NOT MET'} "
            f"(ssl {fid['ssl']:.1f}, class {fid['class']:.1f}, "
            + ", ".join(f"{c} {fid[c]:.1f}" for c in g0) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, required=True, help="sample sheet (slide_id, path, label)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the table and the sample grids")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workflow's outputs here (default: temp)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64, help="vae.image_size: the LDM's resolution")
    parser.add_argument("--folds", type=int, default=4,
                        help="splits.n_folds (>= 2; 4 leaves fold 0 ~60%% of the slides for training); only fold 0 runs")
    # an f=4 VAE (16 x 16 x 4 latents at 64 px): demo.yaml's f=8 one reconstructs no nuclei
    parser.add_argument("--vae-channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch-size", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--ldm-channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--ldm-layers", type=int, default=1)
    parser.add_argument("--ldm-steps", type=int, default=1500)
    parser.add_argument("--ldm-batch-size", type=int, default=16)
    parser.add_argument("--ldm-lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--synthetic-fraction", type=float, default=0.5,
                        help="as many synthetic as real training patches: FID needs images")
    parser.add_argument("--kid-subset-size", type=int, default=100)
    parser.add_argument("--grid", type=int, default=6, help="grid side (patches)")
    parser.add_argument("--zoom", type=int, default=2, help="pixel repeat of the grids, for viewing")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error("--folds must be >= 2 (the workflow's splits)")

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="duvflow-fidelity-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    settings = workdir / "bench-fidelity.yaml"
    settings.write_text(yaml.safe_dump(overlay(args), sort_keys=False))
    start = time.time()
    wall, cpu, _ = snakemake(workdir, [ROOT / "config" / "demo.yaml", settings], args.cores,
                             *map(str, targets()))

    df = fidelity_table(results, args.out)
    table = side_by_side(df)
    recon = df.iloc[0]
    n_patches = sum(len(pd.read_parquet(p)) for p in (results / "tiles").glob("*.parquet"))
    lines = [(f"cohort {args.samples} ({n_patches} patches of {args.patch_size} px at {args.image_size} px), "
              f"fold {FOLD} of {args.folds}; VAE {args.vae_channels} x {args.vae_steps} steps, LDM "
              f"{args.ldm_channels} x {args.ldm_steps} steps, guidance {args.guidance:g}, {args.sampling_steps} "
              "DDIM steps"),
             f"wall {wall / 60:.1f} min on {args.cores} cores, {cpu / 60:.1f} CPU min (Snakemake and all jobs)",
             table.to_string(float_format=lambda v: f"{v:.4g}"),
             (f"VAE floor on held-back patches: rFID {recon['rfid']:.2f}, PSNR {recon['psnr']:.2f} dB, "
              f"SSIM {recon['ssim']:.4f}"),
             verdict(table)]
    bench = benchmark_files(results)
    if not bench.empty:
        lines += ["rules' benchmark files (seconds, MB):", bench.to_string()]
    text = "\n".join(lines)
    print(text)
    (args.out / "table.txt").write_text(text + "\n")
    grids = save_grids(results, args.out, args.grid, args.zoom)
    shutil.copy(results / "fid" / "samples" / f"fold_{FOLD}.png", args.out / "samples_real_class_ssl.png")
    for c in CONDS:
        shutil.copy(results / "fid" / c / f"fold_{FOLD}_neighbours.png", args.out / f"neighbours_{c}.png")
    print(f"grids: {', '.join(map(str, grids))}; workflow outputs in {workdir} (since {time.ctime(start)})")


if __name__ == "__main__":
    main()
