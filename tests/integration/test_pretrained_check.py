"""Unavailable pretrained weights stop the workflow at start, before any job, naming key and remedies."""

from __future__ import annotations

import pytest
from workflow_helpers import ROOT, TEST_CONFIG, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def test_paper_config_offline_stops_before_any_job_with_one_line_per_model(tmp_path, offline):
    proc = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG), str(ROOT / "config" / "config.yaml"),
                     check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pretrained weights for")]
    assert len(lines) == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    for key, name in (("classifier.model", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
                      ("dino.backbone", "vit_small_patch16_224.dino"), ("vae.pretrained", "stabilityai/sd-vae-ft-mse")):
        line = next(line for line in lines if f"({key})" in line)
        assert name in line and "HF_HUB_OFFLINE" in line and "local file or folder" in line and "hf download" in line
    assert not (tmp_path / "results").exists()


def test_one_pretrained_start_in_the_test_config_is_checked_too(tmp_path, offline):
    override = tmp_path / "pretrained-dino.yaml"
    override.write_text("dino:\n  init: pretrained\n  backbone: vit_tiny_patch16_224.augreg_in21k\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG), str(override), check=False)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "(dino.backbone)" in message and "set dino.weights to a local" in message
    assert "(classifier.model)" not in message  # the classifier still starts from random init, as configured
    assert not (tmp_path / "results").exists()
