"""Run the workflow once per test session on the tiny generated cohort (tests/config.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_helpers import scaled_timeout, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A completed run of the default target on the tiny cohort; returns its working directory."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    snakemake(workdir)
    return workdir


def pytest_collection_modifyitems(config, items):
    """pytest-timeout's per-test limit covers only the test body of a test that needs the tiny run
    (or the local SLURM cluster), scaled to the machine's load like the other limits: the run happens
    in the set-up of the first such test and has its own limit, which reports a time-out as such."""
    limit = scaled_timeout(float(config.getini("timeout") or 900))
    for item in items:
        if {"tiny_run", "slurm_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(limit, func_only=True))
