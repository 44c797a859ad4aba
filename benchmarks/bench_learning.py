"""The classification side on a real cohort at CPU scale: deep arms against the baselines.

Runs the workflow (tiling, slide-level folds, DINO per fold, embeddings, classifier, aggregation,
evaluation) on the sample sheet given by ``--samples`` with ``config/demo.yaml``'s CPU-scale model
settings, no LDM and no deployment, twice: the classifier starting from random initialisation and
from the fold's DINO teacher (``classifier.init: dino``; the second run reuses tiles, folds, DINO and
the baselines). Prints one table, an arm per row::

    arm            slide AUC  accuracy (theta)  patch AUC
    real (random)  ...
    real (dino)    ...
    probe          ...
    handcrafted    ...

Training length is set in optimisation steps, not epochs (``--classifier-steps``, ``--dino-steps``):
``demo.yaml``'s epoch counts are sized for its ~2700-patch synthetic cohort and amount to a few dozen
steps on a small real one, too few to train anything. The epochs of each stage become the smallest
count that gives every fold at least that many steps (never fewer than ``demo.yaml``'s). Stain
jitter (``--stain``, HED for bright-field H&E by default; ``fluorescence`` for dark-field) augments
both the classifier and DINO. The DINO-initialised classifier is fine-tuned with layer-wise
learning-rate decay (``--layer-decay``, 0.75 as in BEiT/MAE fine-tuning) so that its learned early
layers are adapted, not overwritten, at the from-scratch learning rate. DINO's head gets at most
as many prototypes (``head.out_dim``) as the largest power of two not above a fold's training
patches (``--no-dino-prototypes`` keeps ``demo.yaml``'s 4096): thousands of prototypes for a few
hundred patches leave the teacher's output near uniform (the collapse the DINO monitor warns of).

Slide AUC and accuracy come from ``evaluation/{arm}/metrics.json`` (pooled test slides of all folds,
the configured fixed theta and the one chosen on validation slides); patch AUC is computed here over
the pooled test patches of all folds (the patch label is its slide's label).

    python benchmarks/bench_learning.py --samples ../shared/data/dev-he/samples.csv --patch-size 128 --folds 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["real", "probe", "handcrafted"]


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def overlay(samples: Path, patch_size: int, folds: int, init: str, *, epochs: int | None = None,
            dino_epochs: int | None = None, stain: str = "none", layer_decay: float | None = None,
            dino_out_dim: int | None = None) -> dict:
    """Settings on top of config/demo.yaml: the given cohort, classification only."""
    dino = demo_config()["dino"]
    classifier = {"init": init, "model": dino["backbone"], "model_kwargs": dino["model_kwargs"],
                  "img_size": dino["img_size"],  # the DINO backbone's architecture, so `dino` init fits
                  "augment": {"stain": stain}, "layer_decay": layer_decay if init != "random" else None}
    if epochs:
        classifier["epochs"] = epochs
    dino_overlay = {"augment": {"stain": stain}, **({"epochs": dino_epochs} if dino_epochs else {}),
                    **({"head": {"out_dim": dino_out_dim}} if dino_out_dim else {})}
    return {"demo": {"enabled": False}, "samples": str(samples.resolve()), "arms": ARMS,
            "tiling": {"patch_size": patch_size}, "splits": {"n_folds": folds}, "deploy": {"enabled": False},
            "classifier": classifier, "dino": dino_overlay}


def fewest_train_patches(results: Path, folds: int) -> int:
    """The training-patch count of the fold with the fewest."""
    splits = pd.read_csv(results / "splits.csv", dtype=str)
    counts = pd.concat([pd.read_parquet(p, columns=["slide_id"]) for p in (results / "tiles").glob("*.parquet")])
    per_slide = counts["slide_id"].value_counts()
    train = splits[(splits["role"] == "train") & splits["fold"].isin([str(k) for k in range(folds)])]
    per_fold = train.assign(n=train["slide_id"].map(per_slide).fillna(0)).groupby("fold")["n"].sum()
    return int(per_fold.min())


def epochs_for(steps: int | None, n_train: int, batch_size: int, minimum: int) -> int:
    """The fewest epochs (at least ``minimum``) that give every fold ``steps`` optimisation steps,
    one step per full batch of the fold's ``n_train`` training patches (the classifier's and DINO's epoch)."""
    if not steps:
        return minimum
    return max(minimum, -(-steps // max(1, n_train // batch_size)))


def prototypes_for(n_train: int, configured: int) -> int:
    """DINO's head size (prototypes): the configured one, at most the largest power of two <= the
    training patches, so a few hundred patches are not spread over thousands of near-empty prototypes."""
    return max(16, min(configured, 2 ** int(math.log2(max(n_train, 1)))))


def run_workflow(workdir: Path, configs: list[Path], cores: int, target: str = "results/comparison/arms.csv") -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), "--cores", str(cores), target]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env=dict(os.environ, DUVFLOW_PROGRESS="0"))
    if proc.returncode != 0:
        sys.exit(f"the workflow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return time.perf_counter() - start


def patch_auc(results: Path, arm: str, folds: int) -> float:
    from sklearn.metrics import roc_auc_score

    splits = pd.read_csv(results / "splits.csv", dtype=str)
    labels = splits.drop_duplicates("slide_id").set_index("slide_id")["label"]
    parts = [pd.read_parquet(results / "predictions" / arm / f"fold_{k}" / "patches.parquet") for k in range(folds)]
    test = pd.concat(parts).query("role == 'test'")
    y = (test["slide_id"].map(labels) == "malignant").to_numpy()
    return float(roc_auc_score(y, test["prob"])) if 0 < y.sum() < len(y) else float("nan")


def arm_row(results: Path, arm: str, folds: int) -> dict:
    metrics = json.loads((results / "evaluation" / arm / "metrics.json").read_text())
    modes = metrics["modes"]
    return {"slide AUC": metrics["auc"]["value"],
            "accuracy (fixed theta)": modes["fixed"]["pooled"]["accuracy"]["value"],
            "accuracy (auto theta)": modes["auto"]["pooled"]["accuracy"]["value"],
            "patch AUC": patch_auc(results, arm, folds), "test slides": metrics["n_slides"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, required=True, help="sample sheet (slide_id, path, label)")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--classifier-steps", type=int, default=300,
                        help="at least this many classifier steps per fold (0: demo.yaml's epochs)")
    parser.add_argument("--dino-steps", type=int, default=300,
                        help="at least this many DINO steps per fold (0: demo.yaml's epochs)")
    parser.add_argument("--stain", choices=["none", "hed", "fluorescence"], default="hed",
                        help="stain jitter of classifier and DINO augmentation (hed: bright-field H&E)")
    parser.add_argument("--no-dino-prototypes", dest="dino_prototypes", action="store_false",
                        help="keep demo.yaml's DINO head out_dim instead of capping it at the training patches")
    parser.add_argument("--layer-decay", type=float, default=0.75,
                        help="layer-wise lr decay of the dino-initialised classifier (0: off)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the outputs here (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="duvflow-learning-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    rows, walls = {}, {}
    demo = demo_config()
    base = {"stain": args.stain, "layer_decay": args.layer_decay or None}
    path = workdir / "bench-tiles.yaml"  # tiles and folds first: the epochs follow from the fold sizes
    path.write_text(yaml.safe_dump(overlay(args.samples, args.patch_size, args.folds, "random", **base)))
    walls["tiles"] = run_workflow(workdir, [ROOT / "config" / "demo.yaml", path], args.cores, "results/splits.csv")
    n_train = fewest_train_patches(results, args.folds)
    base["epochs"] = epochs_for(args.classifier_steps, n_train, demo["classifier"]["batch_size"],
                                demo["classifier"]["epochs"])
    base["dino_epochs"] = epochs_for(args.dino_steps, n_train, demo["dino"]["batch_size"], demo["dino"]["epochs"])
    base["dino_out_dim"] = prototypes_for(n_train, demo["dino"]["head"]["out_dim"]) if args.dino_prototypes else None
    for init in ("random", "dino"):
        path = workdir / f"bench-{init}.yaml"
        path.write_text(yaml.safe_dump(overlay(args.samples, args.patch_size, args.folds, init, **base)))
        walls[init] = run_workflow(workdir, [ROOT / "config" / "demo.yaml", path], args.cores)
        rows[f"real ({init} init)"] = arm_row(results, "real", args.folds)
        if init == "random":  # the baselines do not depend on the classifier's start
            rows.update({arm: arm_row(results, arm, args.folds) for arm in ARMS[1:]})
    table = pd.DataFrame(rows).T
    n_patches = sum(len(pd.read_parquet(p)) for p in (results / "tiles").glob("*.parquet"))
    print(f"cohort {args.samples} ({n_patches} patches of {args.patch_size} px), {args.folds} folds by slide; "
          f"wall time {walls['tiles']:.0f} s (tiles), {walls['random']:.0f} s (random init + baselines), "
          f"{walls['dino']:.0f} s (dino init)")
    print(f"classifier {base['epochs']} epochs, DINO {base['dino_epochs']} epochs, stain jitter {args.stain}, "
          f"layer decay of the dino start {base['layer_decay']}, DINO out_dim {base['dino_out_dim'] or 'demo.yaml'}")
    print(table.to_markdown(floatfmt=".3f") if _has_tabulate() else table.round(3).to_string())
    print(f"outputs in {workdir}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
