"""Paired comparisons, failure flags and patient-level folds of the tiny run (tests/config.yaml: two
demo patients, each with a benign and a malignant slide)."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_tiny_run_writes_paired_comparisons_flags_and_summary(tiny_run):
    res = tiny_run / "results" / "comparison"
    paired = pd.read_csv(res / "paired.csv")
    pairs = set(zip(paired["reference"], paired["arm"]))
    arms = {p.name for p in (tiny_run / "results" / "evaluation").iterdir()}
    # every arm against `real` (baselines included), and the two conditionings against each other
    assert {("real", a) for a in arms - {"real"}} | {("real+class", "real+ssl")} <= pairs, pairs
    assert set(paired["level"]) == {"slide", "patient"}  # the tiny demo sheet names patients
    level = paired.set_index("level")["n"]
    assert (level["slide"] == 4).all() and (level["patient"] == 2).all()  # every slide/patient tested once
    assert paired["mcnemar_p"].between(0, 1).all()
    assert paired["mcnemar_reference_only"].add(paired["mcnemar_arm_only"]).le(4).all()
    flags = pd.read_csv(res / "flags.csv")
    assert list(flags.columns) == ["stage", "condition", "fold", "flag", "arms", "detail", "source"]
    assert set(flags["flag"]) <= {"dino_collapse", "ldm_loss_flat", "vae_no_reconstruction", "synthetic_short"}
    summary = (res / "summary.md").read_text()
    sentences = [line for line in summary.splitlines() if line.startswith("- **real+")]
    assert len(sentences) == 2 and all("`real` with significance on 4 test slides" in s for s in sentences)
    assert ("failure flag" in summary) == (len(flags) > 0)
    assert "<table>" in (res / "summary.html").read_text()
    patients = pd.read_csv(res / "patients.csv")
    assert set(patients["arm"]) == arms and (patients["n_patients"] == 2).all() and (patients["n_slides"] == 4).all()
    assert (patients["n_malignant"] == 2).all()  # a patient with a malignant slide is malignant


def test_folds_go_by_patient(tiny_run):
    sheet = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv", dtype=str)
    assert sheet.groupby("patient_id")["slide_id"].count().tolist() == [2, 2]  # several slides per patient
    splits = pd.read_csv(tiny_run / "results" / "splits.csv", dtype=str)
    assert set(splits["patient_id"]) == set(sheet["patient_id"])
    assert (splits.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()  # a patient has one role
    tests = splits[(splits["fold"] != "all") & (splits["role"] == "test")]
    assert sorted(tests["slide_id"]) == sorted(sheet["slide_id"]) and tests.groupby("fold")["patient_id"].nunique().eq(1).all()
