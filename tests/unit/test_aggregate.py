"""Slide aggregation and theta choice against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from duvflow.core.config import from_dict
from duvflow.evaluate.aggregate import (
    PUBLISHED_THETA,
    AggregateConfig,
    aggregate_folds,
    aggregate_slides,
    binary_metrics,
    choose_theta,
    confusion_counts,
    label_to_int,
    slide_scores,
)

GRID = [0.1, 0.2, 0.3, 0.4, 0.5]


def test_slide_score_is_mean_patch_probability_including_a_one_patch_slide():
    patches = pd.DataFrame({"slide_id": ["a", "a", "a", "b"], "prob": [0.1, 0.2, 0.6, 0.35]})
    scores = slide_scores(patches).set_index("slide_id")
    assert scores.loc["a", "score"] == pytest.approx(0.3)
    assert scores.loc["a", "n_patches"] == 3
    assert scores.loc["b", "score"] == pytest.approx(0.35) and scores.loc["b", "n_patches"] == 1


def test_nan_probabilities_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        slide_scores(pd.DataFrame({"slide_id": ["a"], "prob": [np.nan]}))


def test_metrics_hand_computed():
    # labels:      1  1  1  0  0  0  0
    # predictions: 1  1  0  0  0  1  0   -> tp 2, fn 1, tn 3, fp 1
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [1, 1, 0, 0, 0, 1, 0]
    assert confusion_counts(y, p) == {"tp": 2, "fn": 1, "tn": 3, "fp": 1}
    m = binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)


def test_metrics_of_a_fold_with_one_class():
    m = binary_metrics([0, 0, 0], [0, 1, 0])
    assert math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)  # mean of the defined recalls
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert all(math.isnan(v) for v in binary_metrics([], []).values())


def test_theta_tie_is_benign():
    # a score exactly at theta is not above it
    scores = np.array([0.2, 0.2000001, 0.19])
    assert list(scores > 0.2) == [False, True, False]
    assert AggregateConfig(theta=0.2).fixed_theta == 0.2


def test_choose_theta_maximises_balanced_accuracy():
    # benign 0.05, 0.15; malignant 0.25, 0.45: theta 0.2 separates perfectly (0.15 < 0.2 < 0.25)
    assert choose_theta([0.05, 0.15, 0.25, 0.45], [0, 0, 1, 1], GRID, anchor=0.4) == 0.2
    # benign 0.1, 0.32, malignant 0.35: no grid value separates them; 0.1-0.3 give sensitivity 1 and
    # specificity 0.5 (balanced accuracy .75), 0.4-0.5 give .5 -> of the tied 0.1-0.3 the nearest to 0.5
    assert choose_theta([0.1, 0.32, 0.35], [0, 0, 1], GRID, anchor=0.5) == 0.3


def test_choose_theta_ties_go_to_the_value_nearest_the_default():
    # benign 0.05, malignant 0.9: every grid value separates perfectly -> the anchor's neighbour
    assert choose_theta([0.05, 0.9], [0, 1], GRID, anchor=0.2) == 0.2
    assert choose_theta([0.05, 0.9], [0, 1], GRID, anchor=0.34) == 0.3
    assert choose_theta([0.05, 0.9], [0, 1], GRID, anchor=0.36) == 0.4
    assert choose_theta([0.05, 0.9], [0, 1], GRID, anchor=0.35) == 0.3  # equidistant -> the smaller
    # no validation slides -> the anchor itself
    assert choose_theta([], [], GRID, anchor=0.2) == 0.2


def test_choose_theta_with_one_class_on_validation():
    # only benign slides: specificity is all there is; every theta >= 0.3 reaches 1 -> nearest 0.2 is 0.3
    assert choose_theta([0.12, 0.25], [0, 0], GRID, anchor=0.2) == 0.3


def test_config_checks():
    with pytest.raises(ValueError, match="auto"):
        AggregateConfig(theta="best")
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        AggregateConfig(theta=1.5)
    assert AggregateConfig(theta="auto").fixed_theta == PUBLISHED_THETA == 0.2  # one key: theta
    with pytest.raises(ValueError, match="unknown aggregate setting.*default_theta"):
        from_dict(AggregateConfig, {"theta": "auto", "default_theta": 0.25}, "aggregate")
    assert list(label_to_int(["Benign", "malignant", "MALIGNANT"])) == [0, 1, 1]
    with pytest.raises(ValueError, match="benign/malignant"):
        label_to_int(["benign", "tumour"])


def _fold_files(tmp_path, with_train=False):
    splits = pd.DataFrame({
        "slide_id": ["v1", "v2", "t1", "t2", "t3", "tr"],
        "label": ["benign", "malignant", "benign", "malignant", "benign", "malignant"],
        "fold": "0",
        "role": ["val", "val", "test", "test", "test", "train"],
    })
    # val: benign 0.32, malignant 0.45 -> auto theta 0.4 (0.35 would also do but is not on the grid)
    # test: t3 scores exactly 0.2 (the fixed theta): benign under the fixed rule
    rows = [("v1", 0.30), ("v1", 0.34), ("v2", 0.45), ("t1", 0.10), ("t1", 0.20), ("t2", 0.5), ("t3", 0.2)]
    if with_train:
        rows.append(("tr", 0.9))
    patches = pd.DataFrame(rows, columns=["slide_id", "prob"])
    patches["patch_index"] = patches.groupby("slide_id").cumcount()
    patches["x"] = patches["patch_index"] * 400
    patches["y"] = 0
    patches["role"] = patches["slide_id"].map(splits.set_index("slide_id")["role"])
    splits.to_csv(tmp_path / "splits.csv", index=False)
    patches.to_parquet(tmp_path / "patches.parquet")
    return tmp_path / "patches.parquet", tmp_path / "splits.csv"


@pytest.mark.parametrize("theta", [0.2, "auto"])
def test_aggregate_slides_writes_both_thetas_and_the_configured_prediction(tmp_path, theta):
    patches, splits = _fold_files(tmp_path)
    out, theta_json = tmp_path / "slides.csv", tmp_path / "theta.json"
    aggregate_slides(patches=patches, splits=splits, fold="0", output=out, theta_output=theta_json,
                     aggregate={"theta": theta, "theta_grid": GRID})
    df = pd.read_csv(out).set_index("slide_id")
    assert list(df.columns) == ["fold", "role", "label", "score", "n_patches", "theta", "prediction",
                                "theta_fixed", "theta_auto"]
    assert set(df.index) == {"v1", "v2", "t1", "t2", "t3"}
    assert df.loc["v1", "score"] == pytest.approx(0.32) and df.loc["v1", "n_patches"] == 2
    assert df.loc["t3", "n_patches"] == 1
    assert (df["theta_fixed"] == 0.2).all() and (df["theta_auto"] == 0.4).all()
    expected_theta = 0.4 if theta == "auto" else 0.2
    assert (df["theta"] == expected_theta).all()
    assert df.loc["t3", "prediction"] == "benign"  # 0.2 > 0.2 is false; and 0.2 < 0.4
    assert df.loc["t2", "prediction"] == "malignant"
    assert df.loc["t1", "prediction"] == "benign"
    assert df.loc["v1", "prediction"] == ("malignant" if theta == 0.2 else "benign")
    info = json.loads(theta_json.read_text())
    assert info["theta"] == expected_theta and info["theta_auto"] == 0.4 and info["n_val_slides"] == 2
    assert info["mode"] == ("auto" if theta == "auto" else "fixed")


def test_auto_theta_ignores_test_slides(tmp_path):
    patches, splits = _fold_files(tmp_path)
    out, theta_json = tmp_path / "slides.csv", tmp_path / "theta.json"
    cfg = {"theta": "auto", "theta_grid": GRID}
    aggregate_slides(patches=patches, splits=splits, fold="0", output=out, theta_output=theta_json, aggregate=cfg)
    first = pd.read_csv(out)["theta_auto"].iloc[0]
    # flip every test slide's scores: a choice that looked at test slides would change
    p = pd.read_parquet(patches)
    test = p["role"] == "test"
    p.loc[test, "prob"] = 1 - p.loc[test, "prob"]
    p.to_parquet(patches)
    aggregate_slides(patches=patches, splits=splits, fold="0", output=out, theta_output=theta_json, aggregate=cfg)
    assert pd.read_csv(out)["theta_auto"].iloc[0] == first


def test_predictions_of_training_slides_are_refused(tmp_path):
    patches, splits = _fold_files(tmp_path, with_train=True)
    with pytest.raises(ValueError, match="training slides"):
        aggregate_slides(patches=patches, splits=splits, fold="0", output=tmp_path / "s.csv",
                         theta_output=tmp_path / "t.json", aggregate={})
    assert not (tmp_path / "s.csv").exists()


def test_unknown_fold_is_an_error(tmp_path):
    patches, splits = _fold_files(tmp_path)
    with pytest.raises(ValueError, match="fold '3'"):
        aggregate_slides(patches=patches, splits=splits, fold="3", output=tmp_path / "s.csv",
                         theta_output=tmp_path / "t.json", aggregate={})


def test_one_job_aggregates_several_folds_into_the_same_per_fold_files(tmp_path):
    cfg = {"theta": "auto", "default_theta": 0.2, "theta_grid": GRID}
    patches, splits = _fold_files(tmp_path)
    both = pd.read_csv(splits)
    pd.concat([both, both.assign(fold="1")]).to_csv(splits, index=False)
    single = [tmp_path / f"single{f}.csv" for f in "01"]
    for fold, path in zip("01", single, strict=True):
        aggregate_slides(patches=patches, splits=splits, fold=fold, output=path, theta_output=tmp_path / "t.json",
                         config=cfg)
    outputs, thetas = [tmp_path / f"slides{f}.csv" for f in "01"], [tmp_path / f"theta{f}.json" for f in "01"]
    table = aggregate_folds(patches=[patches, patches], splits=splits, folds=["0", "1"], outputs=outputs,
                            theta_outputs=thetas, config=cfg)
    for fold, path, theta, ref in zip("01", outputs, thetas, single, strict=True):
        assert path.read_bytes() == ref.read_bytes()
        assert json.loads(theta.read_text())["fold"] == fold
    assert sorted(table["fold"].unique()) == ["0", "1"] and len(table) == 10
    with pytest.raises(ValueError, match="one of each per fold"):
        aggregate_folds(patches=[patches], splits=splits, folds=["0", "1"], outputs=outputs, theta_outputs=thetas,
                        config=cfg)


def test_confusion_counts_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(4)
    for _ in range(20):
        y, p = rng.integers(0, 2, 15), rng.integers(0, 2, 15)
        (tn, fp), (fn, tp) = confusion_matrix(y, p, labels=[0, 1])
        assert confusion_counts(y, p) == {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
