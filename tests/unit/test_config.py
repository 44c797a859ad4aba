"""The config layer: the schema owns types, and its integers are integers (``128.0`` is refused)."""

from pathlib import Path

import pytest
import yaml

from duvflow.core.validation import config_errors

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


@pytest.mark.parametrize("config_file", ["config/config.yaml", "config/demo.yaml", "tests/config.yaml"])
def test_shipped_configs_are_valid_with_integers_as_integers(config_file):
    assert config_errors(yaml.safe_load((ROOT / config_file).read_text()), SCHEMA) == []


def test_floats_for_integer_keys_are_named_with_the_fix():
    config = yaml.safe_load("""
        seed: 1234.0
        tiling: {patch_size: 400, thumbnail_max: 2048.0, min_tissue_fraction: 0.5}
        classifier: {epochs: 10.5, val_max_patches_per_slide: 2000.0, lr: 1.0e-4}
        vae: {block_out_channels: [128, 256.0]}
        sampling: {max_synthetic: null}
        resources: {train_dino: {gpu: 1.0, threads: 8}}
    """)
    errors = config_errors(config, SCHEMA)
    expected = {"seed": "(write 1234)", "tiling.thumbnail_max": "(write 2048)", "classifier.epochs": "not float",
                "classifier.val_max_patches_per_slide": "(write 2000)", "vae.block_out_channels[1]": "(write 256)",
                "resources.train_dino.gpu": "(write 1)"}
    assert len(errors) == len(expected), errors
    for key, fix in expected.items():
        assert any(e.startswith(f"{key} = ") and "must be of type integer" in e and fix in e for e in errors), key


def test_numbers_and_free_form_sections_are_left_alone():
    # number keys take 1.0; model_kwargs is free-form (timm's own keyword arguments)
    config = {"tiling": {"min_tissue_fraction": 1.0}, "classifier": {"model_kwargs": {"mlp_ratio": 2.0}},
              "aggregate": {"theta": 1.0, "theta_grid": [0.1, 1.0]}}
    assert config_errors(config, SCHEMA) == []


def test_tracked_settings_do_not_depend_on_key_order():
    from duvflow.core.config import result_settings

    a = result_settings("ldm", {"steps": 3, "block_out_channels": [16, 32], "grid_every": 0, "device": "cpu",
                                "extra": {"b": 1, "a": [{"y": 2, "x": 1}]}})
    b = result_settings("ldm", {"extra": {"a": [{"x": 1, "y": 2}], "b": 1}, "device": "cuda", "grid_every": 0,
                                "block_out_channels": [16, 32], "steps": 3})
    assert repr(a) == repr(b)  # Snakemake compares a tracked param by its repr
    assert "device" not in a and list(a) == sorted(a)
