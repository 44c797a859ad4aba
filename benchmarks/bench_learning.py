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

Slide AUC and accuracy come from ``evaluation/{arm}/metrics.json`` (pooled test slides of all folds,
the configured fixed theta and the one chosen on validation slides); patch AUC is computed here over
the pooled test patches of all folds (the patch label is its slide's label).

    python benchmarks/bench_learning.py --samples ../shared/data/dev-he/samples.csv --patch-size 128 --folds 4
"""

from __future__ import annotations

import argparse
import json
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


def overlay(samples: Path, patch_size: int, folds: int, init: str, epochs: int | None) -> dict:
    """Settings on top of config/demo.yaml: the given cohort, classification only."""
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    dino = demo["dino"]
    classifier = {"init": init, "model": dino["backbone"], "model_kwargs": dino["model_kwargs"],
                  "img_size": dino["img_size"]}  # the DINO backbone's architecture, so `dino` init fits
    if epochs:
        classifier["epochs"] = epochs
    return {"demo": {"enabled": False}, "samples": str(samples.resolve()), "arms": ARMS,
            "tiling": {"patch_size": patch_size}, "splits": {"n_folds": folds}, "deploy": {"enabled": False},
            "classifier": classifier}


def run_workflow(workdir: Path, configs: list[Path], cores: int) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configs), "--cores", str(cores), "results/comparison/arms.csv"]
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
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: demo.yaml's)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the outputs here (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="duvflow-learning-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    rows, walls = {}, {}
    for init in ("random", "dino"):
        path = workdir / f"bench-{init}.yaml"
        path.write_text(yaml.safe_dump(overlay(args.samples, args.patch_size, args.folds, init, args.epochs)))
        walls[init] = run_workflow(workdir, [ROOT / "config" / "demo.yaml", path], args.cores)
        rows[f"real ({init} init)"] = arm_row(results, "real", args.folds)
        if init == "random":  # the baselines do not depend on the classifier's start
            rows.update({arm: arm_row(results, arm, args.folds) for arm in ARMS[1:]})
    table = pd.DataFrame(rows).T
    n_patches = sum(len(pd.read_parquet(p)) for p in (results / "tiles").glob("*.parquet"))
    print(f"cohort {args.samples} ({n_patches} patches of {args.patch_size} px), {args.folds} folds by slide; "
          f"wall time {walls['random']:.0f} s (random init + baselines), {walls['dino']:.0f} s (dino init)")
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
