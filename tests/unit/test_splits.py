"""Slide-level folds: stratification, validation subsets, no leakage, determinism, unusable slides."""

import json

import pandas as pd
import pytest

from duvflow.core.splits import SplitsConfig, assign_folds, check_no_leakage, fold_seed, make_splits


def _labels(n_benign, n_malignant):
    out = {f"B{i:02d}": "benign" for i in range(n_benign)}
    out.update({f"M{i:02d}": "malignant" for i in range(n_malignant)})
    return out


def test_every_slide_is_test_exactly_once_and_never_train_and_test():
    labels = _labels(10, 8)
    t = assign_folds(labels, SplitsConfig(n_folds=5, val_fraction=0.2), seed=3)
    assert set(t["fold"]) == {"0", "1", "2", "3", "4", "all"}
    assert len(t) == len(labels) * 6  # one row per slide and fold
    tests = t[(t["fold"] != "all") & (t["role"] == "test")]
    assert sorted(tests["slide_id"]) == sorted(labels)  # each slide is a test slide of exactly one fold
    for fold, g in t.groupby("fold"):
        roles = g.groupby("role")["slide_id"].apply(set)
        for a in ("train", "val", "test"):
            for b in ("train", "val", "test"):
                if a < b and a in roles and b in roles:
                    assert not roles[a] & roles[b], f"fold {fold}: {a} and {b} share slides"
    assert not (t[t["fold"] == "all"]["role"] == "test").any()
    # labels come from the input mapping, not from anything else
    assert all(t["label"] == t["slide_id"].map(labels))


def test_folds_are_stratified_by_label():
    labels = _labels(10, 10)
    t = assign_folds(labels, SplitsConfig(n_folds=5, val_fraction=0.25), seed=0)
    tests = t[(t["role"] == "test") & (t["fold"] != "all")]
    counts = tests.groupby(["fold", "label"]).size().unstack()
    assert (counts["benign"] == 2).all() and (counts["malignant"] == 2).all()
    vals = t[t["role"] == "val"].groupby(["fold", "label"]).size().unstack()
    # 16 non-test slides x 0.25 = 4 validation slides, 2 per label
    assert (vals.loc[[str(k) for k in range(5)]] == 2).all().all()
    # fold all: 20 x 0.25 = 5 validation slides, split 3 + 2 between the labels
    assert sorted(vals.loc["all"]) == [2, 3]


def test_validation_never_takes_a_labels_last_training_slide():
    # 4 slides, 2 folds: outside each test fold only one slide per label is left
    t = assign_folds(_labels(2, 2), SplitsConfig(n_folds=2, val_fraction=0.5, min_val_slides=1), seed=1)
    for fold in ("0", "1"):
        g = t[t["fold"] == fold]
        assert set(g.loc[g["role"] == "train", "label"]) == {"benign", "malignant"}
        assert (g["role"] == "val").sum() == 0
    g = t[t["fold"] == "all"]
    assert set(g.loc[g["role"] == "train", "label"]) == {"benign", "malignant"}
    assert (g["role"] == "val").sum() == 2


def test_deterministic_and_seed_dependent():
    labels = _labels(7, 6)
    a = assign_folds(labels, SplitsConfig(n_folds=3), seed=11)
    b = assign_folds(dict(reversed(list(labels.items()))), SplitsConfig(n_folds=3), seed=11)
    pd.testing.assert_frame_equal(a, b)
    c = assign_folds(labels, SplitsConfig(n_folds=3), seed=12)
    assert not a.equals(c)


def test_too_few_slides_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 5 usable slides"):
        assign_folds(_labels(2, 2), SplitsConfig(n_folds=5), seed=0)


def test_leakage_check_catches_a_slide_in_two_roles():
    t = assign_folds(_labels(3, 3), SplitsConfig(n_folds=3), seed=0)
    bad = pd.concat([t, t[(t["fold"] == "0") & (t["role"] == "test")].assign(role="train")])
    with pytest.raises(ValueError, match="twice"):
        check_no_leakage(bad)


def test_make_splits_uses_only_usable_slides(tmp_path):
    labels = _labels(3, 3)
    statuses = []
    for sid in labels:
        status = "no_tissue" if sid == "B00" else "ok"
        p = tmp_path / f"{sid}.json"
        p.write_text(json.dumps({"slide_id": sid, "status": status, "reason": "", "n_patches": 0 if status != "ok" else 5}))
        statuses.append(str(p))
    out = tmp_path / "splits.csv"
    make_splits(statuses=statuses, labels=labels, output=out, splits={"n_folds": 2, "val_fraction": 0.2}, seed=5)
    t = pd.read_csv(out, dtype=str)
    assert list(t.columns) == ["slide_id", "label", "fold", "role"]
    assert "B00" not in set(t["slide_id"])
    assert set(t["slide_id"]) == set(labels) - {"B00"}
    with pytest.raises(ValueError, match="unknown key"):
        make_splits(statuses=statuses, labels=labels, output=out, splits={"folds": 2}, seed=5)


def test_fold_seed_distinct():
    assert len({fold_seed(1, f) for f in ("0", "1", "2", "all")}) == 4
    assert fold_seed(1, "all") == 1
