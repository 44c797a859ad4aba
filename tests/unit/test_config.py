"""The config layer: the schema owns types, and its integers are integers (``128.0`` is refused)."""

from pathlib import Path

import pytest
import yaml

from duvflow.core.config import float_integers

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


@pytest.mark.parametrize("config_file", ["config/config.yaml", "config/demo.yaml", "tests/config.yaml"])
def test_shipped_configs_write_integers_as_integers(config_file):
    assert float_integers(yaml.safe_load((ROOT / config_file).read_text()), SCHEMA) == []


def test_floats_for_integer_keys_are_named_with_the_fix():
    config = yaml.safe_load("""
        seed: 1234.0
        tiling: {patch_size: 400, thumbnail_max: 2048.0, min_tissue_fraction: 0.5}
        classifier: {epochs: 10.5, val_max_patches_per_slide: 2000.0, lr: 1.0e-4}
        vae: {block_out_channels: [128, 256.0]}
        sampling: {max_synthetic: null}
        resources: {train_dino: {gpu: 1.0, threads: 8}}
    """)
    why = "a number with a decimal point where an integer is expected"
    assert float_integers(config, SCHEMA) == [
        f"seed is 1234.0, {why}: write 1234",
        f"tiling.thumbnail_max is 2048.0, {why}: write 2048",
        f"classifier.epochs is 10.5, {why}: an integer is needed",
        f"classifier.val_max_patches_per_slide is 2000.0, {why}: write 2000",
        f"vae.block_out_channels[1] is 256.0, {why}: write 256",
        f"resources.train_dino.gpu is 1.0, {why}: write 1",
    ]


def test_numbers_and_free_form_sections_are_left_alone():
    # number keys take 1.0; model_kwargs is free-form (timm's own keyword arguments)
    config = {"tiling": {"min_tissue_fraction": 1.0}, "classifier": {"model_kwargs": {"mlp_ratio": 2.0}},
              "aggregate": {"theta": 1.0, "theta_grid": [0.1, 1.0]}}
    assert float_integers(config, SCHEMA) == []
