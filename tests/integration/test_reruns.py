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


def _planned(workdir, tmp_path, overlay: dict) -> list[tuple[str, dict, str]]:
    """(rule, wildcards, reason) of every job a dry run with ``overlay`` merged into the test config plans."""
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(path))
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
    demo = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv")
    slides = tiny_run / "results" / "demo" / "slides"
    sheet = pd.DataFrame({"slide_id": demo["slide_id"], "label": demo["label"],
                          "path": [str(slides / f"{s}.tiff") for s in demo["slide_id"]]})
    # the same slides through a user's own sheet instead of the generated demo: no slide is re-tiled
    sheet.to_csv(tmp_path / "same.csv", index=False)
    jobs = _planned(tiny_run, tmp_path, {"demo": {"enabled": False}, "samples": str(tmp_path / "same.csv")})
    assert not {rule for rule, _, _ in jobs} & {"make_demo_slide", "tile_slide", "make_splits", "train_dino"}

    # one more slide (a copy of a demo slide under a new id)
    shutil.copy(slides / f"{demo['slide_id'][0]}.tiff", tmp_path / "extra.tiff")
    extra = pd.DataFrame({"slide_id": ["extra01"], "label": [demo["label"][0]], "path": [str(tmp_path / "extra.tiff")]})
    pd.concat([sheet, extra]).to_csv(tmp_path / "more.csv", index=False)
    jobs = _planned(tiny_run, tmp_path, {"demo": {"enabled": False}, "samples": str(tmp_path / "more.csv")})
    rules = {rule for rule, _, _ in jobs}
    assert [wc["slide"] for rule, wc, _ in jobs if rule == "tile_slide"] == ["extra01"]
    assert "make_demo_slide" not in rules
    # the cohort QC and the slide-level folds include the new slide, and so everything trained on them
    assert {"qc_cohort", "make_splits", "train_dino", "train_classifier"} <= rules, sorted(rules)
