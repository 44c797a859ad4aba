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
    override = tmp_path / "sheet.yaml"
    override.write_text(f"samples: {sheet}\ndemo:\n  enabled: false\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG), str(override), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "missing.tiff" in message and "line 2" in message and "line 3" in message
    assert "duplicate slide_id 'A'" in message and "unknown label 'tumour'" in message
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
    assert TEST_CONFIG.is_file() and (ROOT / "workflow" / "Snakefile").is_file()


def test_every_job_wrote_a_log(tiny_run):
    logs = list((tiny_run / "results" / "logs").rglob("*.log"))
    rules = {p.parent.name for p in logs}
    assert {"make_demo_slide", "tile_slide", "qc_cohort"} <= rules


def test_completed_run_has_nothing_left_to_do(tiny_run):
    proc = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_every_stage_wrote_well_formed_outputs(tiny_run):
    res = tiny_run / "results"
    splits = pd.read_csv(res / "splits.csv", dtype=str)
    assert set(splits["fold"]) == {"0", "1", "all"}
    for fold in ("0", "1"):
        roles = splits[splits["fold"] == fold].set_index("slide_id")["role"]
        train = set(roles[roles != "test"].index)
        test = set(roles[roles == "test"].index)
        assert test and not train & test
        emb = pd.read_parquet(res / "embeddings" / f"fold_{fold}.parquet")
        assert {"slide_id", "patch_index", "x", "y", "label", "role", "embedding"} <= set(emb.columns)
        assert len({len(e) for e in emb["embedding"]}) == 1
        assert (res / "dino" / f"fold_{fold}" / "teacher.safetensors").stat().st_size > 0
        for cond in ("ssl", "class"):
            manifest = pd.read_parquet(res / "synthetic" / cond / f"fold_{fold}" / "manifest.parquet")
            assert len(manifest) > 0
            assert set(manifest["source_slide"]) <= train, "synthetic patches must come from training slides"
            assert all((res / "synthetic" / cond / f"fold_{fold}" / f).is_file() for f in manifest["file"])
            fid = json.loads((res / "fid" / cond / f"fold_{fold}.json").read_text())
            assert fid["n_synthetic"] == len(manifest)
        slides = pd.read_csv(res / "predictions" / "real" / f"fold_{fold}" / "slides.csv", dtype={"fold": str})
        test_rows = slides[slides["role"] == "test"]
        assert set(test_rows["slide_id"]) == test
        assert test_rows["score"].between(0, 1).all()
    comparison = pd.read_csv(res / "comparison" / "arms.csv")
    assert {"real", "real+class", "real+ssl"} <= set(comparison["arm"])
    assert (res / "comparison" / "arms.md").read_text().count("| real") >= 3
    assert json.loads((res / "deploy" / "real" / "model.json").read_text())


def test_report_is_self_contained_html(tiny_run):
    report = tiny_run / "report.html"
    snakemake(tiny_run, "--report", str(report))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000 and "<html" in html.lower()
    for figure in ("cohort.png", "sweep.png", "arms.csv"):
        assert figure in html, f"{figure} missing from the report"
