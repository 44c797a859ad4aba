"""The workflow end to end on the tiny generated cohort: every stage's outputs exist and are well-formed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from workflow_helpers import ROOT, TEST_CONFIG, snakemake

from duvflow.slides.store import PatchStore

pytestmark = pytest.mark.slow


def test_lint_reports_no_errors(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_bad_sample_sheet_stops_before_any_job(tmp_path):
    sheet = tmp_path / "slides.csv"
    sheet.write_text("slide_id,path,label\nA,missing.tiff,benign\nA,also-missing.tiff,tumour\n")
    proc = snakemake(tmp_path, "-n", "--config", f"samples={sheet}", "demo={'enabled': False}", check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "missing.tiff" in err and "duplicate slide_id 'A'" in err and "unknown label 'tumour'" in err
    assert not (tmp_path / "results").exists()


def test_tiles_and_qc(tiny_run):
    qc = pd.read_csv(tiny_run / "results" / "qc" / "cohort.tsv", sep="\t")
    assert len(qc) == 4 and set(qc["status"]) <= {"ok", "no_tissue", "skipped"}
    assert (qc["status"] == "ok").all(), qc
    for slide in qc["slide_id"]:
        tiles = pd.read_parquet(tiny_run / "results" / "tiles" / f"{slide}.parquet")
        status = json.loads((tiny_run / "results" / "tiles" / f"{slide}.json").read_text())
        store = PatchStore(tiny_run / "results" / "tiles" / f"{slide}.h5")
        assert len(tiles) == len(store) == status["n_patches"] > 0
        assert list(tiles["patch_index"]) == list(range(len(tiles)))
        assert (tiles["tissue_fraction"] >= 0.5).all()
        assert store[0].shape == (200, 200, 3)
        assert (tiny_run / "results" / "qc" / "thumbnails" / f"{slide}.png").stat().st_size > 0
    assert (tiny_run / "results" / "qc" / "cohort.png").stat().st_size > 0
    assert TEST_CONFIG.is_file() and (ROOT / "Snakefile").is_file()


def test_every_job_wrote_a_log(tiny_run):
    logs = list((tiny_run / "results" / "logs").rglob("*.log"))
    rules = {p.parent.name for p in logs}
    assert {"make_demo_slide", "tile_slide", "qc_cohort"} <= rules


def test_completed_run_has_nothing_left_to_do(tiny_run):
    proc = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
