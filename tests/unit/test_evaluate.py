"""Cross-validated evaluation, bootstrap CIs, theta sweep and the arm comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from duvflow.evaluate.aggregate import binary_metrics
from duvflow.evaluate.evaluation import (
    _auc_rows,
    _average_ranks,
    _counts_metrics,
    bootstrap_metrics,
    compare_arms,
    evaluate_arm,
    metric_table,
    roc_auc,
    roc_curve,
    sweep_theta,
)

GRID = [0.1, 0.2, 0.3, 0.4, 0.5]
AGG = {"theta": 0.2, "theta_grid": GRID}


def _slides(fold, rows, theta_auto):
    """rows: (slide_id, role, label, score)."""
    df = pd.DataFrame(rows, columns=["slide_id", "role", "label", "score"])
    df.insert(1, "fold", str(fold))
    df["n_patches"] = 3
    df["theta"] = 0.2
    df["prediction"] = np.where(df["score"] > 0.2, "malignant", "benign")
    df["theta_fixed"] = 0.2
    df["theta_auto"] = theta_auto
    return df


def _two_folds(tmp_path, arm="real"):
    f0 = _slides(0, [("a", "test", "malignant", 0.35), ("b", "test", "benign", 0.25), ("c", "test", "benign", 0.05),
                     ("v0", "val", "benign", 0.28), ("v1", "val", "malignant", 0.6)], theta_auto=0.3)
    f1 = _slides(1, [("d", "test", "malignant", 0.15), ("e", "test", "malignant", 0.9), ("f", "test", "benign", 0.2),
                     ("v2", "val", "benign", 0.1), ("v3", "val", "malignant", 0.3)], theta_auto=0.2)
    paths = []
    for i, f in enumerate((f0, f1)):
        p = tmp_path / f"{arm}-fold{i}.csv"
        f.to_csv(p, index=False)
        paths.append(p)
    return paths


def test_metric_table_hand_computed():
    # scores 0.1 0.3 0.25 0.6 with labels 0 0 1 1 at theta 0.2: predictions 0 1 1 1
    m = metric_table([0, 0, 1, 1], [0.1, 0.3, 0.25, 0.6], 0.2)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 0, 1, 1)
    assert m["accuracy"] == pytest.approx(0.75) and m["sensitivity"] == 1 and m["specificity"] == 0.5
    # AUC: pairs (pos, neg): (0.25,0.1)>, (0.25,0.3)<, (0.6,0.1)>, (0.6,0.3)> -> 3/4
    assert m["auc"] == pytest.approx(0.75)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_vectorised_metrics_match_the_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, 17)).astype(bool)
    s = np.round(rng.random((50, 17)), 1)  # rounding makes ties
    p = s > 0.4
    rows = _counts_metrics(y, p)
    auc = _auc_rows(y, s)
    for i in range(50):
        ref = binary_metrics(y[i], p[i])
        for k, v in ref.items():
            assert rows[k][i] == pytest.approx(v, nan_ok=True)
        if 0 < y[i].sum() < y.shape[1]:
            assert auc[i] == pytest.approx(roc_auc_score(y[i], s[i]))
        else:
            assert math.isnan(auc[i])


def test_numpy_roc_and_ranks_equal_scikit_learn_and_scipy_exactly():
    # the evaluation jobs avoid importing scikit-learn and SciPy; their results must not change
    rng = np.random.default_rng(5)
    for trial in range(60):
        n = int(rng.integers(2, 30))
        s = np.round(rng.random((20, n)), int(rng.integers(1, 4)))  # coarse rounding: many ties
        assert np.array_equal(_average_ranks(s), rankdata(s, axis=1))
        y = rng.integers(0, 2, n)
        if 0 < y.sum() < n:
            for ours, ref in zip(roc_curve(y, s[0]), sklearn_roc_curve(y, s[0]), strict=True):
                assert np.array_equal(ours, ref)
            assert roc_auc(y, s[0]) == roc_auc_score(y, s[0])
    fpr, tpr, _ = roc_curve([1, 1, 1], [0.1, 0.5, 0.9])  # no negatives: the false positive rate is undefined
    assert np.isnan(fpr).all() and tpr[0] == 0 and tpr[-1] == 1


def test_bootstrap_ci_contains_the_point_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.clip(0.3 * y + rng.normal(0.25, 0.15, 60), 0, 1)
    pred = s > 0.45  # some errors in both classes
    ci = bootstrap_metrics(y, s, {"fixed": pred}, n=1000, seed=3)
    point = binary_metrics(y, pred)
    for metric, (low, high) in ci["fixed"].items():
        assert low <= point[metric] <= high, metric
        assert high - low > 0
    low, high = ci["scores"]["auc"]
    assert low <= roc_auc(y, s) <= high
    # the same seed gives the same interval
    assert bootstrap_metrics(y, s, {"fixed": pred}, n=1000, seed=3) == ci


def test_evaluate_arm_pooled_and_per_fold(tmp_path):
    paths = _two_folds(tmp_path)
    res = evaluate_arm(slides=paths, arm="real", metrics_json=tmp_path / "m.json", metrics_csv=tmp_path / "m.csv",
                       pooled_slides=tmp_path / "pooled.csv", roc_plot=tmp_path / "roc.png",
                       evaluate={"bootstrap": 200, "ci": 0.95, "seed": 0})
    # pooled test slides: a .35 M, b .25 B, c .05 B, d .15 M, e .9 M, f .2 B
    # fixed 0.2: predictions M M B B M B -> tp a,e; fn d; fp b; tn c,f
    fixed = res["modes"]["fixed"]
    assert fixed["confusion"] == {"tp": 2, "fn": 1, "tn": 2, "fp": 1}
    assert fixed["pooled"]["accuracy"]["value"] == pytest.approx(4 / 6)
    assert fixed["pooled"]["sensitivity"]["value"] == pytest.approx(2 / 3)
    # auto: fold 0 uses 0.3 (a M, b B, c B), fold 1 uses 0.2 (d B, e M, f B) -> tp 2 fn 1 tn 3 fp 0
    auto = res["modes"]["auto"]
    assert auto["theta_per_fold"] == {"0": 0.3, "1": 0.2}
    assert auto["confusion"] == {"tp": 2, "fn": 1, "tn": 3, "fp": 0}
    assert auto["pooled"]["specificity"]["value"] == 1.0
    assert auto["per_fold"]["0"]["accuracy"] == 1.0 and auto["per_fold"]["1"]["accuracy"] == pytest.approx(2 / 3)
    assert fixed["per_fold"]["0"]["specificity"] == 0.5
    # AUC: positives a .35, d .15, e .9; negatives b .25, c .05, f .2 -> 7 of 9 pairs ordered
    assert res["auc"]["value"] == pytest.approx(7 / 9)
    for mode in ("fixed", "auto"):
        for m in ("accuracy", "sensitivity", "specificity", "balanced_accuracy"):
            e = res["modes"][mode]["pooled"][m]
            assert e["ci_low"] <= e["value"] <= e["ci_high"]
    table = pd.read_csv(tmp_path / "m.csv", dtype={"fold": str})
    row = table[(table["scope"] == "fold") & (table["fold"] == "1") & (table["theta_mode"] == "auto")
                & (table["metric"] == "sensitivity")]
    assert row["value"].item() == pytest.approx(0.5) and row["theta"].item() == 0.2
    pooled = pd.read_csv(tmp_path / "pooled.csv")
    assert len(pooled) == 6 and set(pooled["role"]) == {"test"}
    assert {"prediction_fixed", "prediction_auto"} <= set(pooled.columns)
    assert json.loads((tmp_path / "m.json").read_text())["n_slides"] == 6
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_a_slide_tested_in_two_folds_is_refused(tmp_path):
    paths = _two_folds(tmp_path)
    f1 = pd.read_csv(paths[1])
    f1.loc[0, "slide_id"] = "a"
    f1.to_csv(paths[1], index=False)
    with pytest.raises(ValueError, match="more than one fold"):
        evaluate_arm(slides=paths, arm="real", metrics_json=tmp_path / "m.json", metrics_csv=tmp_path / "m.csv",
                     pooled_slides=tmp_path / "p.csv", roc_plot=tmp_path / "r.png", evaluate={"bootstrap": 10})


def test_sweep_is_monotonic_and_marks_configured_and_best(tmp_path):
    rng = np.random.default_rng(2)
    frames = []
    for fold in range(3):
        rows = [(f"s{fold}-{i}", "test" if i < 12 else "val", lab, float(np.clip(0.25 * (lab == "malignant")
                                                                                + rng.random() * 0.4, 0, 1)))
                for i, lab in enumerate(["malignant", "benign"] * 8)]
        frames.append(_slides(fold, rows, theta_auto=0.3))
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"f{i}.csv")
        f.to_csv(paths[-1], index=False)
    out = sweep_theta(slides=paths, arm="real", table=tmp_path / "sweep.csv", plot=tmp_path / "sweep.png",
                      aggregate={"theta": 0.2, "theta_grid": [0.1, 0.2, 0.3, 0.4, 0.5, 0.15]})
    assert list(out["theta"]) == sorted(out["theta"])
    assert (np.diff(out["sensitivity"]) <= 0).all()  # fewer slides above a higher threshold
    assert (np.diff(out["specificity"]) >= 0).all()
    assert (np.diff(out["tp"] + out["fp"]) <= 0).all()
    assert out.loc[out["configured"], "theta"].item() == 0.2
    best = out.loc[out["best_on_validation"]]
    assert len(best) == 1 and best["val_balanced_accuracy"].item() == out["val_balanced_accuracy"].max()
    assert (out["n_test"] == 36).all() and (out["n_val"] == 12).all()
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_compare_arms_table(tmp_path):
    arms = ["real", "real+ssl"]
    metrics, pooled = [], []
    for arm in arms:
        paths = _two_folds(tmp_path, arm=arm.replace("+", "_"))
        m, p = tmp_path / f"{arm}.json", tmp_path / f"{arm}-pooled.csv"
        evaluate_arm(slides=paths, arm=arm, metrics_json=m, metrics_csv=tmp_path / f"{arm}.csv", pooled_slides=p,
                     roc_plot=tmp_path / f"{arm}.png", evaluate={"bootstrap": 50})
        metrics.append(m)
        pooled.append(p)
    fid = []
    for fold, (f, d) in enumerate([(30.0, 100.0), (40.0, 120.0)]):
        fid.append(tmp_path / f"fid{fold}.json")
        fid[-1].write_text(json.dumps({"fid": f, "fd_dino": d, "kid": 0.01}))
    table = compare_arms(metrics=metrics, pooled_slides=pooled, arms=arms, fid={"real+ssl": fid},
                         table=tmp_path / "arms.csv", markdown=tmp_path / "arms.md", roc_plot=tmp_path / "roc.png",
                         aggregate=AGG)
    assert list(table["arm"]) == ["real", "real", "real+ssl", "real+ssl"]
    ssl = table[(table["arm"] == "real+ssl") & (table["theta_mode"] == "fixed")].iloc[0]
    assert ssl["fid"] == pytest.approx(35.0) and ssl["fd_dino"] == pytest.approx(110.0)
    assert ssl["fid_sd"] == pytest.approx(np.std([30, 40], ddof=1))
    assert math.isnan(table.loc[table["arm"] == "real", "fid"].iloc[0])
    assert ssl["accuracy"] == pytest.approx(4 / 6)
    md = (tmp_path / "arms.md").read_text()
    assert "| real+ssl | 0.2 | 0.667 [" in md and "35.00" in md
    assert "## theta fixed (configured)" in md and "## theta auto" in md
    assert "| real | 0.3, 0.2 (per fold) | 0.833 [" in md  # auto thetas differ per fold
    auto = table[(table["arm"] == "real+ssl") & (table["theta_mode"] == "auto")].iloc[0]
    assert auto["theta_per_fold"] == "0:0.3;1:0.2" and math.isnan(auto["theta"])
    assert (tmp_path / "roc.png").stat().st_size > 1000
