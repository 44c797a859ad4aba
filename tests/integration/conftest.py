"""Run the workflow once per test session on the tiny generated cohort (tests/config.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_helpers import snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A completed run of the default target on the tiny cohort; returns its working directory."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    snakemake(workdir)
    return workdir
