"""Incremental reruns after a completed tiny run, checked with dry runs (nothing is executed), one
test per class of setting (the README's "What reruns" table): run-time-only settings and resources
rerun nothing; a result setting reruns exactly the jobs that depend on it; a changed theta reruns
only aggregation and what follows; a changed sampling setting reruns sampling and everything
downstream but no DINO, VAE or LDM training; `tiling.on_bad_slide` reruns only the slides whose
outcome changes; a slide added to the sheet is tiled alone (the other slides' tiles are kept) and
reruns what depends on the cohort; `--config section={key: value}` changes one nested setting. And
the HTML report shows the results table's rows on its first page."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml
from workflow_helpers import TEST_CONFIG, snakemake

from duvflow.core.config import RUNTIME_KEYS

pytestmark = pytest.mark.slow

# rules that only turn patch predictions into slide calls, metrics, tables and the exported model
AGGREGATION = {"aggregate_slides", "evaluate_arm", "compare_arms", "compare_paired", "export_model",
               "predict_new_slides", "all"}
# everything before sampling: slides, tiles, splits, DINO and its embeddings/probes, VAE, LDM
BEFORE_SAMPLING = {"make_demo_slide", "write_demo_sheet", "tile_slide", "qc_cohort", "make_splits", "train_dino",
                   "embed_patches", "embed_initial", "probe_embeddings", "summarise_probes", "train_vae",
                   "train_ldm"}


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


# a new value for every run-time-only key (duvflow.core.config.RUNTIME_KEYS)
RUN_TIME_CHANGES = {
    "tiling": {"store_compression": "gzip"},
    "dino": {"checkpoint_every": 5, "checkpoints_keep": 1, "device": "auto", "augment_on": "workers"},
    "embed": {"batch_size": 5, "device": "auto"},
    "vae": {"checkpoint_every": 3, "checkpoints_keep": 1, "log_every": 2, "encode_batch_size": 3, "num_workers": 1,
            "device": "auto"},
    "ldm": {"checkpoint_every": 2, "checkpoints_keep": 1, "log_every": 2, "grid_every": 0, "grid_size": 2,
            "grid_steps": 1, "grid_guidance": 1.5, "device": "auto"},
    "sampling": {"batch_size": 5, "device": "auto"},
    "fidelity": {"batch_size": 3, "device": "auto"},
    "classifier": {"eval_batch_size": 7, "checkpoint_every": 3, "checkpoints_keep": 1, "num_workers": 2,
                   "preload": False, "device": "auto"},
}


def _jobs(planned) -> set[tuple[str, tuple]]:
    return {(rule, tuple(sorted(wc.items()))) for rule, wc, _ in planned}


def _own_sheet(tiny_run, slides: int | None = None) -> pd.DataFrame:
    """A user's own sample sheet of the tiny run's demo slides (the first ``slides`` of them)."""
    demo = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv").head(slides)
    folder = tiny_run / "results" / "demo" / "slides"
    return pd.DataFrame({"slide_id": demo["slide_id"], "label": demo["label"],
                         "path": [str(folder / f"{s}.tiff") for s in demo["slide_id"]]})


def test_the_completed_run_is_up_to_date(tiny_run, tmp_path):
    assert _planned(tiny_run, tmp_path, {}) == []


def test_changing_resources_reruns_nothing(tiny_run, tmp_path):
    # threads, memory, time and GPUs decide where and how fast a job runs, not what it computes
    overlay = {"resources": {"train_dino": {"threads": 3, "mem_mb": 999, "runtime": 7, "gpu": 2}}}
    assert _planned(tiny_run, tmp_path, overlay) == []


def test_changing_run_time_settings_reruns_nothing(tiny_run, tmp_path):
    # workers, inference and sampling batch sizes, checkpoint/log/grid cadence, devices, compression
    assert {s: set(keys) for s, keys in RUN_TIME_CHANGES.items()} == {s: set(k) for s, k in RUNTIME_KEYS.items()}
    assert _planned(tiny_run, tmp_path, RUN_TIME_CHANGES) == []


@pytest.mark.parametrize(("setting", "stage"), [({"classifier": {"epochs": 3}}, "train_classifier"),
                                                ({"dino": {"lr": 0.003}}, "train_dino")])
def test_changing_a_result_setting_reruns_exactly_the_jobs_that_depend_on_it(tiny_run, tmp_path, setting, stage):
    changed = _planned(tiny_run, tmp_path, setting)
    # the stage's jobs and everything downstream of them, as forcing the stage would run
    assert _jobs(changed) == _jobs(_planned(tiny_run, tmp_path, {}, "--forcerun", stage))
    assert all("Params have changed" in reason for rule, _, reason in changed if rule == stage)


def test_on_bad_slide_reruns_only_the_slides_whose_outcome_changes(tiny_run, tmp_path):
    # every slide of the tiny run is readable: `skip` changes no slide's outcome
    assert _planned(tiny_run, tmp_path, {"tiling": {"on_bad_slide": "skip"}}) == []

    # the readable slides and an unreadable one, recorded as skipped
    (tmp_path / "bad.tiff").write_bytes(b"not a slide")
    sheet = pd.concat([_own_sheet(tiny_run, slides=4),  # n_folds 2 needs two readable slides per class
                       pd.DataFrame({"slide_id": ["bad"], "label": ["benign"], "path": [str(tmp_path / "bad.tiff")]})])
    sheet.to_csv(tmp_path / "slides.csv", index=False)
    workdir = tmp_path / "run"
    workdir.mkdir()
    skip = {"demo": {"enabled": False}, "samples": str(tmp_path / "slides.csv"), "tiling": {"on_bad_slide": "skip"}}
    qc = "results/qc/cohort.tsv"
    snakemake(workdir, qc, *_overlay(tmp_path, skip))
    assert "skipped" in (workdir / "results" / "tiles" / "bad.json").read_text()
    assert _planned(workdir, tmp_path, skip, qc) == []
    # under `fail` the skipped slide must fail: it alone is tiled again (then the cohort QC)
    jobs = _planned(workdir, tmp_path, {**skip, "tiling": {"on_bad_slide": "fail"}}, qc)
    assert [wc["slide"] for rule, wc, _ in jobs if rule == "tile_slide"] == ["bad"]
    assert {rule for rule, _, _ in jobs} == {"tile_slide", "qc_cohort"}
    # as a run under `fail` leaves it (no outputs of the bad slide, no cohort QC): under `skip` it
    # alone is tiled, the readable slides are kept
    for path in [*(workdir / "results").rglob("bad.*"), *(workdir / "results" / "qc").glob("cohort.*")]:
        path.unlink()
    jobs = _planned(workdir, tmp_path, skip, qc)
    assert [wc["slide"] for rule, wc, _ in jobs if rule == "tile_slide"] == ["bad"]
    assert {rule for rule, _, _ in jobs} == {"tile_slide", "qc_cohort"}


def test_a_nested_setting_changes_on_the_command_line(tiny_run, tmp_path):
    # typed: 0.35 arrives as a number (Snakemake alone passes "0.35", which the schema refuses)
    jobs = _planned(tiny_run, tmp_path, {}, "--config", "aggregate={theta: 0.35}")
    rules = {rule for rule, _, _ in jobs}
    assert "aggregate_slides" in rules and rules <= AGGREGATION, sorted(rules)


def test_changing_theta_reruns_only_aggregation(tiny_run, tmp_path):
    jobs = _planned(tiny_run, tmp_path, {"aggregate": {"theta": 0.35}})
    rules = {rule for rule, _, _ in jobs}
    assert "aggregate_slides" in rules and rules <= AGGREGATION, sorted(rules)
    assert any("Params have changed" in reason for rule, _, reason in jobs if rule == "aggregate_slides")


@pytest.mark.parametrize("setting", [{"guidance": 3.5}, {"synthetic_fraction": 0.1}])
def test_changing_sampling_reruns_sampling_and_downstream_but_no_training_before_it(tiny_run, tmp_path, setting):
    jobs = _planned(tiny_run, tmp_path, {"sampling": setting})
    rules = {rule for rule, _, _ in jobs}
    assert {"sample_ldm", "train_classifier", "aggregate_slides"} <= rules, sorted(rules)
    assert not rules & BEFORE_SAMPLING, sorted(rules & BEFORE_SAMPLING)
    # the real-only arm uses no synthetic patches: its classifiers and predictions stay
    assert not [wc for rule, wc, _ in jobs if rule == "train_classifier" and wc["arm"] == "real"]


def test_adding_a_slide_tiles_only_that_slide(tiny_run, tmp_path):
    # a user's own sample sheet (the demo run's slides): tiles, QC and folds done first
    demo = pd.read_csv(tiny_run / "results" / "demo" / "slides.csv")
    slides = tiny_run / "results" / "demo" / "slides"
    sheet = _own_sheet(tiny_run)
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
    assert len(arms) == len(list((tiny_run / "results" / "evaluation").iterdir())) and "fold" not in {k for rule, wc, _ in jobs for k in wc}
    assert counts["aggregate_slides"] == counts["evaluate_arm"] == len(arms)
    assert counts["compare_arms"] == counts["export_model"] == 1


def test_the_report_shows_the_results_table_on_its_first_page(tiny_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake(tiny_run, "--report", str(report))
    html = report.read_text().replace("\\n", "\n")  # the pages are JSON strings inside the file
    table = pd.read_csv(tiny_run / "results" / "comparison" / "arms.csv", dtype=str, keep_default_na=False)
    assert len(table) == 2 * len(list((tiny_run / "results" / "evaluation").iterdir()))  # arms x (fixed, auto theta)
    for row in table.itertuples(index=False):  # arm, theta rule, theta, theta per fold, slides: one table row
        assert re.search(r"\s*".join(f"<td>{re.escape(value)}</td>" for value in row[:5]), html), row
    assert '"results/comparison/arms.md"' in html  # the Markdown table is a report item too
