"""Slide- and patient-level folds: stratification, validation subsets, no leakage, determinism, unusable slides."""

import json

import pandas as pd
import pytest

from duvflow.core.splits import SplitsConfig, assign_folds, check_no_leakage, fold_seed, make_splits, patient_labels


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


def _patients(n_patients, slides_per_patient, malignant_every=2, mixed=()):
    """Slides ``P03_s1``.. of ``n_patients`` patients; every ``malignant_every``-th patient malignant,
    patients in ``mixed`` with one benign and otherwise malignant slides."""
    labels, patients = {}, {}
    for p in range(n_patients):
        for s in range(slides_per_patient):
            sid = f"P{p:02d}_s{s}"
            malignant = p % malignant_every == 0 or (p in mixed and s > 0)
            labels[sid] = "malignant" if malignant else "benign"
            patients[sid] = f"patient{p:02d}"
    return labels, patients


def test_grouped_folds_never_split_a_patient():
    labels, patients = _patients(12, 3, mixed=(1, 5))
    t = assign_folds(labels, SplitsConfig(n_folds=3, val_fraction=0.25), seed=4, patients=patients)
    assert list(t.columns) == ["slide_id", "label", "fold", "role", "patient_id"]
    assert (t["patient_id"] == t["slide_id"].map(patients)).all()
    # one role per patient and fold: all slides of a patient are test, val or train together
    assert (t.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()
    tests = t[(t["fold"] != "all") & (t["role"] == "test")]
    assert sorted(tests["slide_id"]) == sorted(labels)  # every slide still tested exactly once
    assert (tests.groupby("patient_id")["fold"].nunique() == 1).all()
    # validation drawn by patient: 0.25 of the 8 non-test patients = 2 patients (6 slides)
    for fold in ("0", "1", "2"):
        val = t[(t["fold"] == fold) & (t["role"] == "val")]
        assert val["patient_id"].nunique() == 2 and len(val) == 6


def test_grouped_folds_stratify_by_patient_label_mixed_counts_as_malignant():
    # patients 0, 2, .., 10 malignant, 1 and 3 mixed (one benign slide): 8 malignant and 4 benign patients
    labels, patients = _patients(12, 2, mixed=(1, 3))
    plab = patient_labels(labels, patients)
    assert plab["patient01"] == "malignant" and plab["patient05"] == "benign"
    assert sorted(pd.Series(plab).value_counts().items()) == [("benign", 4), ("malignant", 8)]
    t = assign_folds(labels, SplitsConfig(n_folds=4, val_fraction=0.0), seed=0, patients=patients)
    tests = t[(t["fold"] != "all") & (t["role"] == "test")].drop_duplicates("patient_id")
    counts = tests.assign(plabel=tests["patient_id"].map(plab)).groupby(["fold", "plabel"]).size().unstack()
    # 4 folds: 2 malignant + 1 benign patient each (a mixed patient stratified as benign would break this)
    assert (counts["malignant"] == 2).all() and (counts["benign"] == 1).all()


def test_without_patient_column_every_slide_is_its_own_patient():
    labels = _labels(7, 6)
    plain = assign_folds(labels, SplitsConfig(n_folds=3), seed=11)
    assert "patient_id" not in plain.columns
    own = assign_folds(labels, SplitsConfig(n_folds=3), seed=11, patients={s: s for s in labels})
    # same roles for slides as patients of one slide each (folds may differ: group K-fold is another algorithm)
    assert (own.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()
    assert sorted(own.loc[(own["role"] == "test") & (own["fold"] != "all"), "slide_id"]) == sorted(labels)


def test_grouped_folds_deterministic_and_too_few_patients_is_a_clear_error():
    labels, patients = _patients(9, 2)
    a = assign_folds(labels, SplitsConfig(n_folds=3), seed=2, patients=patients)
    b = assign_folds(dict(reversed(list(labels.items()))), SplitsConfig(n_folds=3), seed=2, patients=patients)
    pd.testing.assert_frame_equal(a, b)
    few, few_patients = _patients(2, 3)
    with pytest.raises(ValueError, match="needs at least 3 usable patients"):
        assign_folds(few, SplitsConfig(n_folds=3), seed=0, patients=few_patients)


def test_leakage_check_fails_on_a_planted_patient_overlap():
    labels, patients = _patients(6, 2)
    t = assign_folds(labels, SplitsConfig(n_folds=3, val_fraction=0.0), seed=0, patients=patients)
    check_no_leakage(t)
    # plant: one slide of a fold-0 test patient becomes a training slide of fold 0
    test0 = t[(t["fold"] == "0") & (t["role"] == "test")]
    victim = test0["slide_id"].iloc[0]
    bad = t.copy()
    bad.loc[(bad["fold"] == "0") & (bad["slide_id"] == victim), "role"] = "train"
    bad.loc[(bad["fold"] == "1") & (bad["slide_id"] == victim), "role"] = "test"  # still tested exactly once
    with pytest.raises(ValueError, match=f"patient {patients[victim]} in fold 0: test, train"):
        check_no_leakage(bad)
    # a stage reading the tampered table (DINO, VAE/LDM latents, classifier, embeddings) refuses it too
    from duvflow.core.patches import attach_split

    index = pd.DataFrame({"slide_id": sorted(labels), "patch_index": 0})
    attach_split(index, t, "0")
    with pytest.raises(ValueError, match="different roles"):
        attach_split(index, bad, "0")


def test_make_splits_with_patients_writes_the_patient_column(tmp_path):
    labels, patients = _patients(6, 2)
    statuses = []
    for sid in labels:
        p = tmp_path / f"{sid}.json"
        p.write_text(json.dumps({"slide_id": sid, "status": "ok", "n_patches": 5}))
        statuses.append(str(p))
    out = tmp_path / "splits.csv"
    make_splits(statuses=statuses, labels=labels, output=out, splits={"n_folds": 2}, seed=5, patients=patients)
    t = pd.read_csv(out, dtype=str)
    assert list(t.columns) == ["slide_id", "label", "fold", "role", "patient_id"]
    assert (t.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()


def test_sheet_keeps_an_optional_patient_column_and_rejects_empty_patients(tmp_path):
    from duvflow.core.sheet import SampleSheetError, read_sheet

    for name in ("a.tiff", "b.tiff", "c.tiff"):
        (tmp_path / name).write_bytes(b"")
    sheet = tmp_path / "slides.csv"
    sheet.write_text("slide_id,path,label,patient_id\nA,a.tiff,benign, p1 \nB,b.tiff,malignant,p1\nC,c.tiff,benign,p2\n")
    df = read_sheet(sheet)
    assert df["patient_id"].to_dict() == {"A": "p1", "B": "p1", "C": "p2"}
    sheet.write_text("slide_id,path,label,patient_id\nA,a.tiff,benign,p1\nB,b.tiff,malignant,\n")
    with pytest.raises(SampleSheetError, match=r"line 3 \(B\): empty patient_id"):
        read_sheet(sheet)
    sheet.write_text("slide_id,path,label\nA,a.tiff,benign\n")
    assert "patient_id" not in read_sheet(sheet).columns
