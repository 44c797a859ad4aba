"""Which settings rules track for reruns (duvflow.core.config) and how `--config` values are typed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from duvflow.core.config import (
    BAD_SLIDE_KEYS,
    RUNTIME_KEYS,
    job_settings,
    result_settings,
    typed_overrides,
    untracked_settings,
)

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def schema_sections() -> dict:
    return yaml.safe_load(SCHEMA.read_text())["properties"]


def test_every_run_time_key_is_a_schema_key_described_as_run_time_only(schema_sections):
    for section, keys in RUNTIME_KEYS.items():
        properties = schema_sections[section]["properties"]
        for key in keys:
            assert key in properties, f"{section}.{key} is not in the schema"
            assert "run-time only" in properties[key]["description"].lower(), f"{section}.{key}"


def test_only_run_time_keys_are_described_as_run_time_only(schema_sections):
    for section, values in schema_sections.items():
        for key, prop in values.get("properties", {}).items():
            if "run-time only" in str(prop.get("description", "")).lower():
                assert key in RUNTIME_KEYS.get(section, ()), f"{section}.{key} is described as run-time only"


def test_every_stage_section_says_what_a_change_reruns(schema_sections):
    for section, prop in schema_sections.items():
        assert "rerun" in prop.get("description", ""), section


def test_result_settings_leave_out_run_time_and_per_slide_keys():
    classifier = {"lr": 1e-3, "epochs": 2, "batch_size": 16, "eval_batch_size": 64, "num_workers": 4, "device": "cpu"}
    assert result_settings("classifier", classifier) == {"lr": 1e-3, "epochs": 2, "batch_size": 16}
    tiling = {"patch_size": 200, "on_bad_slide": "skip", "store_compression": "gzip"}
    assert result_settings("tiling", tiling) == {"patch_size": 200}
    assert "on_bad_slide" in BAD_SLIDE_KEYS["tiling"]
    assert result_settings("probe", {"knn_k": 5}) == {"knn_k": 5}  # a section without run-time keys


def test_job_settings_put_the_untracked_keys_back_from_the_job_config():
    config = {"sampling": {"steps": 3, "guidance": 2.0, "batch_size": 16, "device": "cpu"}}
    job = SimpleNamespace(params=SimpleNamespace(sampling=result_settings("sampling", config["sampling"])),
                          config=config)
    assert job_settings(job, "sampling") == config["sampling"]
    assert untracked_settings(config, "sampling") == {"batch_size": 16, "device": "cpu"}


def test_nested_config_values_from_the_command_line_are_typed():
    # what Snakemake's parse_config makes of `--config aggregate='{theta: 0.3}' arms='[real]' seed=3 ...`
    parsed = {"aggregate": {"theta": "0.3", "theta_grid": ["0.1", "0.2"]}, "arms": ["real"], "seed": 3,
              "classifier": {"lr": "1e-3", "hub": "true", "weights": "null", "device": "cpu", "epochs": "2"},
              "samples": "001.csv"}
    assert typed_overrides(parsed) == {
        "aggregate": {"theta": 0.3, "theta_grid": [0.1, 0.2]}, "arms": ["real"], "seed": 3,
        "classifier": {"lr": 1e-3, "hub": True, "weights": None, "device": "cpu", "epochs": 2},
        "samples": "001.csv",  # a top-level string stays as Snakemake typed it
    }
    assert typed_overrides({"aggregate": {"theta": "auto"}}) == {"aggregate": {"theta": "auto"}}
