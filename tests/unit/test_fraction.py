"""The synthetic-fraction sweep: arm names, nested stratified subsets of one synthetic set, the
classifier's loading of an arm's subset, the paired comparisons and the fraction plot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from duvflow.classifier.data import load_synthetic
from duvflow.core.arms import arm_condition, arm_fraction, expand_arms, fraction_values, resolve_arm
from duvflow.core.synthetic import label_quota, nested_subset, synthetic_count
from duvflow.evaluate.evaluation import METRICS, compare_fractions
from duvflow.evaluate.paired import arm_pairs
from duvflow.ldm.config import SamplingConfig
from duvflow.ldm.sample import plan_synthetic

ARMS = ["real", "real+class", "real+ssl", "probe"]


def test_a_fraction_list_multiplies_the_synthetic_arms_and_a_number_keeps_the_names():
    assert expand_arms(ARMS, 0.05) == ARMS
    assert expand_arms(ARMS, [0.25, 0.05, 0.10]) == [
        "real", "real+class@0.05", "real+class@0.1", "real+class@0.25", "real+ssl@0.05", "real+ssl@0.1",
        "real+ssl@0.25", "probe"]
    assert fraction_values(0.1) is None and fraction_values([0.1, 0.05]) == [0.05, 0.1]
    assert arm_condition("real+ssl@0.1") == "ssl" and arm_condition("real+class") == "class"
    assert arm_condition("real") is None and arm_condition("probe") is None
    assert arm_fraction("real+ssl@0.1") == 0.1 and arm_fraction("real+ssl") is None and arm_fraction("real") is None
    with pytest.raises(ValueError, match="not a fraction"):
        arm_fraction("real+ssl@x")
    # deploy.arm `real+ssl` under a sweep: the largest fraction's arm; names with a fraction stay
    assert resolve_arm("real+ssl", [0.05, 0.1]) == "real+ssl@0.1"
    assert resolve_arm("real+ssl@0.05", [0.05, 0.1]) == "real+ssl@0.05"
    assert resolve_arm("real", [0.05, 0.1]) == "real" and resolve_arm("real+ssl", 0.1) == "real+ssl"
    assert SamplingConfig(synthetic_fraction=(0.05, 0.25, 0.1)).largest_fraction == 0.25
    assert SamplingConfig(synthetic_fraction=0.1).largest_fraction == 0.1


def test_smaller_fractions_are_nested_stratified_subsets_of_the_largest_set():
    rng = np.random.default_rng(0)
    real = (rng.random(900) < 0.3).astype(np.int64)  # 30% malignant training patches
    n = {f: synthetic_count(len(real), f) for f in (0.05, 0.1, 0.25)}
    plan = plan_synthetic(real, n[0.25], seed=7)  # the one sampled set, in plan order
    set_labels = real[plan]
    subsets = {f: nested_subset(set_labels, real, n[f]) for f in n}
    assert set(subsets[0.05]) < set(subsets[0.1]) < set(subsets[0.25]) == set(range(len(plan)))
    for f, rows in subsets.items():
        assert len(rows) == n[f] and np.all(np.diff(rows) > 0)  # in plan order
        # stratified like the sampler: the label split of synthetic_count(n_real, f)
        assert np.bincount(set_labels[rows], minlength=2).tolist() == label_quota(real, n[f])[1].tolist()
        # and the very set a sampler asked for n[f] patches would have planned
        assert plan[rows].tolist() == plan_synthetic(real, n[f], seed=7).tolist()
    # a label with too few rows (a set sampled for a smaller fraction) is an error
    with pytest.raises(ValueError, match="sampled for a smaller fraction"):
        nested_subset(set_labels[: n[0.05]], real, n[0.1])


def _synthetic_folder(folder, labels):
    folder.mkdir()
    files = []
    for i, _ in enumerate(labels):
        files.append(f"syn_{i:06d}.png")
        Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)).save(folder / files[-1])
    pd.DataFrame({"file": files, "label": np.where(labels == 1, "malignant", "benign"),
                  "source_slide": "tr_b1", "seed": np.arange(len(labels))}).to_parquet(folder / "manifest.parquet")
    return folder


def test_the_classifier_loads_the_arms_subset_of_the_one_set(tmp_path, caplog):
    real = np.array([0] * 60 + [1] * 30)  # n_real 90: fraction 0.25 -> 30 synthetic, 0.1 -> 10
    plan = plan_synthetic(real, synthetic_count(90, 0.25), seed=1)
    folder = _synthetic_folder(tmp_path / "syn", real[plan])
    whole = load_synthetic(folder)
    assert len(whole) == 30
    small = load_synthetic(folder, 0.1, real)
    assert len(small) == 10 and small["label_int"].tolist().count(1) == 3  # 6.67 : 3.33 -> 7 : 3, like 60 : 30
    assert set(small["file"]) < set(whole["file"])
    assert small["file"].tolist() == whole["file"][nested_subset(real[plan], real, 10)].tolist()
    assert len(load_synthetic(folder, 0.25, real)) == 30
    # a set capped by sampling.max_synthetic: all of it, with a warning
    assert len(load_synthetic(folder, 0.4, real)) == 30 and "max_synthetic" in caplog.text
    with pytest.raises(ValueError, match="real training labels"):
        load_synthetic(folder, 0.1)


def test_fraction_arms_pair_with_real_and_with_the_other_conditioning_at_their_fraction():
    arms = expand_arms(["real", "real+class", "real+ssl", "probe", "handcrafted"], [0.05, 0.1])
    pairs = arm_pairs(arms)
    assert [p for p in pairs if p[0] == "real"] == [("real", a) for a in arms if a != "real"]
    assert [p for p in pairs if p[0] != "real"] == [
        ("real+class@0.05", "real+ssl@0.05"), ("real+class@0.1", "real+ssl@0.1"), ("probe", "handcrafted")]
    # a single fraction: every pair, as before
    assert len(arm_pairs(["real", "real+class", "real+ssl", "probe"])) == 6


def _metrics_json(path, arm, base):
    """An evaluate_arm JSON with every metric ``base`` +- 0.1 as its CI."""
    entry = {m: {"value": base, "ci_low": base - 0.1, "ci_high": base + 0.1} for m in METRICS}
    modes = {mode: {"pooled": entry, "theta_per_fold": {"0": 0.5}} for mode in ("fixed", "auto")}
    path.write_text(json.dumps({"arm": arm, "n_slides": 20, "bootstrap": {"n": 100, "ci": 0.9, "seed": 0},
                                "auc": {"value": base + 0.05, "ci_low": base - 0.05, "ci_high": base + 0.15},
                                "modes": modes}))
    return path


def test_the_fraction_plot_draws_every_metric_against_the_fraction(tmp_path):
    arms = ["real", "real+class@0.05", "real+class@0.1", "real+ssl@0.05", "real+ssl@0.1"]
    base = dict(zip(arms, (0.6, 0.62, 0.64, 0.7, 0.8), strict=True))
    metrics = [_metrics_json(tmp_path / f"{a}.json", a, base[a]) for a in arms]
    table = compare_fractions(metrics=metrics, arms=arms, table=tmp_path / "fraction.csv",
                              plot=tmp_path / "fraction.png", aggregate={"theta": 0.5})
    assert set(table["metric"]) == {*METRICS, "auc"} and (table["theta_mode"] == "fixed").all()
    ssl = table[(table["condition"] == "ssl") & (table["metric"] == "balanced_accuracy")]
    assert ssl["fraction"].tolist() == [0.05, 0.1] and ssl["value"].tolist() == pytest.approx([0.7, 0.8])
    assert ssl["ci_high"].tolist() == pytest.approx([0.8, 0.9])
    real = table[table["arm"] == "real"]
    assert (real["fraction"] == 0).all() and (real["condition"] == "").all()
    auc = table[(table["arm"] == "real+class@0.1") & (table["metric"] == "auc")].iloc[0]
    assert auc["value"] == pytest.approx(0.69) and auc["ci_low"] == pytest.approx(0.59)
    assert pd.read_csv(tmp_path / "fraction.csv").shape == table.shape
    with Image.open(tmp_path / "fraction.png") as im:
        assert im.size[0] > 4 * im.size[1] / 2  # five panels side by side
    # auto theta configured: the auto mode's metrics
    auto = compare_fractions(metrics=metrics, arms=arms, table=tmp_path / "a.csv", plot=tmp_path / "a.png",
                             aggregate={"theta": "auto"})
    assert (auto["theta_mode"] == "auto").all()
    with pytest.raises(ValueError, match="fraction sweep"):
        compare_fractions(metrics=[_metrics_json(tmp_path / "s.json", "real+ssl", 0.5)], arms=["real+ssl"], table=tmp_path / "b.csv", plot=tmp_path / "b.png",
                          aggregate={"theta": 0.5})
