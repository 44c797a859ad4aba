"""Incremental reruns after a completed tiny run, checked with dry runs (nothing is executed):
a changed theta reruns only aggregation and what follows; a changed sampling setting reruns
sampling and everything downstream but no DINO, VAE or LDM training; a slide added to the sheet
is tiled alone (the other slides' tiles are kept) and reruns what depends on the cohort."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml
from workflow_helpers import TEST_CONFIG, snakemake

pytestmark = pytest.mark.slow

# rules that only turn patch predictions into slide calls, metrics, tables and the exported model
AGGREGATION = {"aggregate_slides", "evaluate_arm", "sweep_theta", "compare_arms", "export_model",
               "predict_new_slides", "all"}
# everything before sampling: slides, tiles, splits, DINO and its embeddings/probes, VAE, LDM
BEFORE_SAMPLING = {"make_demo_slide", "write_demo_sheet", "tile_slide", "qc_cohort", "make_splits", "train_dino",
                   "embed_patches", "embed_initial", "probe_embeddings", "summarise_probes", "train_vae",
                   "encode_latents", "train_ldm"}


def _overlay(tmp_path, overlay: dict) -> list[str]:
    """Arguments that merge ``overlay`` into the test config."""
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return ["--configfile", str(TEST_CONFIG), str(path)]


def _planned(workdir, tmp_path, overlay: dict, *targets: str) -> list[tuple[str, dict, str]]:
    """(rule, wildcards, reason) of every job a dry run with ``overlay`` merged into the test config plans."""
    proc = snakemake(workdir, "-n", *targets, *_overlay(tmp_path, overlay))  # --configfile takes the rest
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", proc.stdout + proc.stderr, re.MULTILINE):
        body = m.group(2)
        wc = re.search(r"^    wildcards: (.*)$", body, re.MULTILINE)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        reason = re.search(r"^    reason: (.*)$", body, re.MULTILINE)
        jobs.append((m.group(1), wildcards, reason.group(1) if reason else ""))
    return jobs


def test_the_completed_run_is_up_to_date(tiny_run, tmp_path):
    assert _planned(tiny_run, tmp_path, {}) == []


def test_changing_resources_reruns_nothing(tiny_run, tmp_path):
    # threads, memory, time and GPUs decide where and how fast a job runs, not what it computes
    overlay = {"resources": {"train_dino": {"threads": 3, "mem_mb": 999, "runtime": 7, "gpu": 2}}}
    assert _planned(tiny_run, tmp_path, overlay) == []


def test_changing_theta_reruns_only_aggregation(tiny_run, tmp_path):
    jobs = _planned(tiny_run, tmp_path, {"aggregate": {"theta": 0.35}})
    rules = {rule for rule, _, _ in jobs}
    assert "aggregate_slides" in rules and rules <= AGGREGATION, sorted(rules)
    assert any("Params have changed" in reason for rule, _, reason in jobs if rule == "aggregate_slides")


@pytest.mark.parametrize("setting", [{"guidance": 3.5}, {"synthetic_fraction": 0.1}])
def test_changing_sampling_reruns_sampling_and_downstream_but_no_training_before_it(tiny_run, tmp_path, setting):
    jobs = _planned(tiny_run, tmp_path, {"sampling": setting})
    rules = {rule for rule, _, _ in jobs}
    assert {"sample_ldm", "train_classifier", "predict_tiles", "aggregate_slides"} <= rules, sorted(rules)
    assert not rules & BEFORE_SAMPLING, sorted(rules & BEFORE_SAMPLING)
    # the real-only arm uses no synthetic patches: its classifiers and predictions stay
    assert not [wc for rule, wc, _ in jobs if rule in ("train_classifier", "predict_tiles") and wc["arm"] == "real"]


def test_adding_a_slide_tiles_only_that_slide(tiny_run, tmp_path):
    # a user's own sample sheet (the demo run's slides): tiles, QC and folds done first
    demo = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv")
    slides = tiny_run / "results" / "demo" / "slides"
    sheet = pd.DataFrame({"slide_id": demo["slide_id"], "label": demo["label"],
                          "path": [str(slides / f"{s}.tiff") for s in demo["slide_id"]]})
    sheet.to_csv(tmp_path / "slides.csv", index=False)
    workdir = tmp_path / "run"
    workdir.mkdir()
    own_sheet = {"demo": {"enabled": False}, "samples": str(tmp_path / "slides.csv")}
    tiling = ("results/qc/cohort.tsv", "results/splits.csv")
    snakemake(workdir, *tiling, *_overlay(tmp_path, own_sheet))
    assert _planned(workdir, tmp_path, own_sheet, *tiling) == []

    # one more slide (a copy of a demo slide under a new id)
    shutil.copy(slides / f"{demo['slide_id'][0]}.tiff", tmp_path / "extra.tiff")
    extra = pd.DataFrame({"slide_id": ["extra01"], "label": [demo["label"][0]], "path": [str(tmp_path / "extra.tiff")]})
    pd.concat([sheet, extra]).to_csv(tmp_path / "slides.csv", index=False)
    jobs = _planned(workdir, tmp_path, own_sheet, *tiling)
    assert [wc.get("slide") for rule, wc, _ in jobs if rule == "tile_slide"] == ["extra01"]
    # the cohort QC and the slide-level folds include the new slide
    assert {rule for rule, _, _ in jobs} == {"tile_slide", "qc_cohort", "make_splits"}
    # the whole workflow: still only the new slide is tiled (the rest follows from the new folds)
    jobs = _planned(workdir, tmp_path, own_sheet)
    assert [wc.get("slide") for rule, wc, _ in jobs if rule == "tile_slide"] == ["extra01"]
    assert "make_demo_slide" not in {rule for rule, _, _ in jobs}


def test_a_theta_change_starts_one_light_job_per_arm_and_step(tiny_run, tmp_path):
    # one aggregation job per arm covers all its folds; fold `all` (deployable model) is aggregated by export_model
    jobs = _planned(tiny_run, tmp_path, {"aggregate": {"theta": 0.35}})
    arms = {wc["arm"] for rule, wc, _ in jobs if rule == "aggregate_slides"}
    counts = {rule: sum(r == rule for r, _, _ in jobs) for rule in AGGREGATION}
    assert len(arms) == 3 and "fold" not in {k for rule, wc, _ in jobs for k in wc}
    assert counts["aggregate_slides"] == counts["evaluate_arm"] == counts["sweep_theta"] == len(arms)
    assert counts["compare_arms"] == counts["export_model"] == 1
