"""The baseline arms end to end in the tiny DAG: fitted per fold, aggregated and compared like every arm."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from workflow_helpers import TEST_CONFIG, snakemake

pytestmark = pytest.mark.slow


def test_baselines_are_arms_of_the_results(tiny_run):
    res = tiny_run / "results"
    comparison = pd.read_csv(res / "comparison" / "arms.csv")
    assert {"real", "probe", "handcrafted"} <= set(comparison["arm"])
    assert (res / "comparison" / "arms.md").read_text().count("| probe") >= 1
    for fold in ("0", "1"):
        real = pd.read_parquet(res / "predictions" / "real" / f"fold_{fold}" / "patches.parquet")
        for arm in ("probe", "handcrafted"):
            patches = pd.read_parquet(res / "predictions" / arm / f"fold_{fold}" / "patches.parquet")
            assert list(patches.columns) == list(real.columns)
            # the same slides and patches as the deep arm: same folds, same evaluation set
            key = ["slide_id", "patch_index", "role"]
            assert patches[key].sort_values(key).reset_index(drop=True).equals(
                real[key].sort_values(key).reset_index(drop=True))
            assert patches["prob"].between(0, 1).all()
            slides = pd.read_csv(res / "predictions" / arm / f"fold_{fold}" / "slides.csv")
            assert set(slides["role"]) <= {"val", "test"} and len(slides) > 0
            info = json.loads((res / "baselines" / arm / f"fold_{fold}.json").read_text())
            assert info["n_train"] > 0 and info["arm"] == arm
        metrics = json.loads((res / "evaluation" / "probe" / "metrics.json").read_text())
        assert metrics["arm"] == "probe" and metrics["n_slides"] > 0
    assert not (res / "classifier" / "probe").exists() and not (res / "deploy" / "probe").exists()


def test_theta_change_does_not_refit_the_baselines(tiny_run, tmp_path):
    overlay = tmp_path / "theta.yaml"
    overlay.write_text(yaml.safe_dump({"aggregate": {"theta": 0.4}}))
    proc = snakemake(tiny_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay))
    rules = set(re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, re.MULTILINE))
    assert "aggregate_slides" in rules
    assert not rules & {"fit_baseline", "extract_patch_features", "embed_patches", "train_dino"}, sorted(rules)
    planned = re.findall(r"predictions/(\w+)/fold_\d+/slides\.csv", proc.stdout)
    assert {"probe", "handcrafted"} <= set(planned)


def test_baselines_switch_off(tmp_path):
    overlay = tmp_path / "arms.yaml"
    overlay.write_text(yaml.safe_dump({"arms": ["real"]}))
    proc = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG), str(overlay))
    assert "fit_baseline" not in proc.stdout and "extract_patch_features" not in proc.stdout
