"""Running the project's Snakefile from tests (imported by the integration tests and their conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = ROOT / "tests" / "config.yaml"


def scaled_timeout(seconds: float) -> float:
    """A test's time limit for a quiet 2-core machine, scaled for this one.

    ``DUVFLOW_TEST_TIMEOUT_SCALE`` multiplies it; without it the limit grows with the load per core
    (a machine shared by other jobs runs the same work slower).
    """
    scale = os.environ.get("DUVFLOW_TEST_TIMEOUT_SCALE")
    if scale:
        return seconds * float(scale)
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def run_with_timeout(cmd: list[str], timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` that reports a time-out as such (the limit, how to raise it, the output so far)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise AssertionError(f"{what} timed out after {timeout:.0f} s (the limit scales with the machine's load; "
                             f"DUVFLOW_TEST_TIMEOUT_SCALE=<factor> raises it):\n{tail}") from None


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run Snakemake on the project's Snakefile in ``workdir`` with the test config.

    ``timeout`` is for a quiet machine (:func:`scaled_timeout`); running past it fails the test saying so.
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TEST_CONFIG), "--cores", "2", *args]
    env = dict(os.environ, DUVFLOW_PROGRESS="0")
    proc = run_with_timeout(cmd, scaled_timeout(timeout), f"snakemake {' '.join(args)}", cwd=workdir, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc

