"""Paired comparisons and failure flags of the tiny run, and the workflow on a sheet with patient_id."""

from __future__ import annotations

import pandas as pd
import pytest
from workflow_helpers import TEST_CONFIG, snakemake

pytestmark = pytest.mark.slow


def test_tiny_run_writes_paired_comparisons_flags_and_summary(tiny_run):
    res = tiny_run / "results" / "comparison"
    paired = pd.read_csv(res / "paired.csv")
    pairs = set(zip(paired["reference"], paired["arm"]))
    arms = {p.name for p in (tiny_run / "results" / "evaluation").iterdir()}
    # every arm against `real` (baselines included), and the two conditionings against each other
    assert {("real", a) for a in arms - {"real"}} | {("real+class", "real+ssl")} <= pairs, pairs
    assert set(paired["level"]) == {"slide"}  # the demo sheet names no patients
    assert (paired["n"] == 4).all()  # every slide is a test slide of one fold
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
    assert pd.read_csv(res / "patients.csv").empty


def test_sheet_with_patient_ids_groups_the_folds_by_patient(tiny_run, tmp_path):
    demo = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv", dtype=str).sort_values("slide_id")
    slides = demo["slide_id"].tolist()
    sheet = demo[["slide_id", "label"]].assign(
        path=[str(tiny_run / "results" / "demo" / "slides" / f"{s}.tiff") for s in slides],
        patient_id=["patientA", "patientA", "patientB", "patientB"])  # two slides per patient
    sheet.to_csv(tmp_path / "slides.csv", index=False)
    override = tmp_path / "patients.yaml"
    override.write_text(f"samples: {tmp_path / 'slides.csv'}\ndemo:\n  enabled: false\n")
    args = ("--configfile", str(TEST_CONFIG), str(override))
    dry = snakemake(tmp_path, "-n", *args)  # the whole DAG builds with patients
    assert "compare_paired" in dry.stdout and "make_splits" in dry.stdout
    snakemake(tmp_path, "results/splits.csv", *args)  # the target before --configfile (which takes several)
    splits = pd.read_csv(tmp_path / "results" / "splits.csv", dtype=str)
    assert set(splits["patient_id"]) == {"patientA", "patientB"}
    assert (splits.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()
    tests = splits[(splits["fold"] != "all") & (splits["role"] == "test")]
    assert sorted(tests["slide_id"]) == slides and tests.groupby("fold")["patient_id"].nunique().eq(1).all()
