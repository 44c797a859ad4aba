"""The workflow through the SLURM profile on a real (local, single-node) SLURM cluster.

tests/cluster/start-local-slurm.sh starts slurmctld + slurmd + munged with two fake GPUs; the tiny
cohort's tiling, splits and DINO training (GPU-tagged here) are submitted with
`--profile workflow/profiles/slurm`. Checks: every job went through sbatch and completed in SLURM, the GPU
jobs asked for a GPU and jobs running at the same time got different cards, and the outputs equal
those of the local run of the same config. The daemons the test started are stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from workflow_helpers import ROOT, TEST_CONFIG, run_with_timeout, scaled_timeout

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = ROOT / "tests" / "cluster"
GPU_RULE = "train_dino"
FOLDS = ("0", "1")
TARGETS = ["results/qc/cohort.tsv", "results/splits.csv",
           *(f"results/dino/fold_{f}/teacher.safetensors" for f in FOLDS)]


def _why_no_slurm() -> str | None:
    if os.environ.get("DUVFLOW_TEST_SLURM") == "0":
        return "DUVFLOW_TEST_SLURM=0"
    if not sys.platform.startswith("linux"):
        return "the local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "starting a local SLURM cluster needs root (daemons, /etc/slurm, munge key)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, SLURM_RUNDIR=str(tmp_path_factory.mktemp("slurm-run")), SLURM_FAKE_GPUS="2",
               SLURM_PARTITION="debug", PATH=os.environ.get("DUVFLOW_TEST_REAL_PATH", os.environ["PATH"]))
    stop = [str(CLUSTER / "stop-local-slurm.sh")]
    limit = scaled_timeout(600)  # apt-get may install the packages first
    try:
        start = subprocess.run([str(CLUSTER / "start-local-slurm.sh")], env=env, capture_output=True, text=True,
                               timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        subprocess.run(stop, env=env, check=False)
        pytest.fail(f"the local SLURM cluster did not start within {limit:.0f} s (package installation? "
                    "DUVFLOW_TEST_TIMEOUT_SCALE=<factor> raises the limit)")
    if start.returncode != 0:
        subprocess.run(stop, env=env, check=False)
        pytest.skip(f"the local SLURM cluster could not be started:\n{start.stderr[-2000:]}")
    try:
        yield env
    finally:
        # stops the daemons and removes /etc/slurm/*.conf and a munge key the start script wrote
        subprocess.run(stop, env=env, check=False, capture_output=True)


def _scontrol(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PATH=os.environ.get("DUVFLOW_TEST_REAL_PATH", os.environ["PATH"]))).stdout
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def test_tiny_cohort_through_the_slurm_profile(slurm_cluster, tiny_run, tmp_path, record_property):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # the GPU rule asks for a card here (tests/config.yaml keeps every rule on the CPU); one thread
    # per tiling job lets two run at once on a 2-CPU node (resources never change outputs)
    overlay = tmp_path / "resources.yaml"
    overlay.write_text(yaml.safe_dump({"resources": {
        GPU_RULE: {"threads": 1, "mem_mb": 1500, "runtime": 10, "gpu": 1},
        "tile_slide": {"threads": 1, "mem_mb": 1500, "runtime": 10},
    }}))
    env = dict(slurm_cluster, DUVFLOW_PROGRESS="0", DUVFLOW_SLURM_PARTITION="debug",
               DUVFLOW_SLURM_GPU_PARTITION="debug", DUVFLOW_SLURM_ACCOUNT="duvflow",
               DUVFLOW_GPU_LOCK_DIR=str(tmp_path / "gpu-locks"))  # jobs inherit it (sbatch --export=ALL)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TEST_CONFIG), str(overlay), "--profile", str(ROOT / "workflow" / "profiles" / "slurm"),
           "--slurm-init-seconds-before-status-checks", "1", *TARGETS]
    t0 = time.monotonic()
    # ~90 s on a quiet 2-core machine; a run past the limit fails as a time-out
    proc = run_with_timeout(cmd, scaled_timeout(900), "the SLURM run", cwd=workdir, env=env)
    wall = time.monotonic() - t0
    record_property("slurm_run_seconds", round(wall, 1))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    # every job was submitted with sbatch and completed as a SLURM job
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    planned = int(re.search(r"^total\s+(\d+)", log, re.MULTILINE).group(1))
    assert len(submitted) == planned > 0, log[-4000:]
    jobs = {}
    for _, slurm_id, slurm_log in submitted:
        info = _scontrol(slurm_id)
        assert info["JobState"] == "COMPLETED", info
        assert Path(slurm_log).is_file(), slurm_log  # the profile keeps SLURM's job output
        # <slurm-logdir>/rule_<rule>/<wildcard values>/<slurm job id>.log
        rel = Path(slurm_log).relative_to(workdir / "results" / "logs" / "slurm")
        assert rel.name == f"{slurm_id}.log", rel
        jobs[slurm_id] = (rel.parts[0].removeprefix("rule_"), info, rel.parts[1:-1])
    rules = sorted({rule for rule, _, _ in jobs.values()})
    assert {"make_demo_slide", "tile_slide", "qc_cohort", "make_splits", GPU_RULE} <= set(rules), rules

    # GPU jobs asked SLURM for a card (--gpus=1); the others did not
    gpu_jobs = []
    for slurm_id, (rule, info, wildcards) in jobs.items():
        asked = "gpu" in info.get("TresPerJob", "")
        assert asked == (rule == GPU_RULE), (rule, info.get("TresPerJob"))
        if asked:
            (fold,) = wildcards
            rule_log = (workdir / "results" / "logs" / GPU_RULE / f"fold_{fold}.log").read_text()
            got = re.search(r"GPU\(s\) (\S+) allocated \(from CUDA_VISIBLE_DEVICES", rule_log)
            assert got, rule_log[-2000:]
            span = [datetime.fromisoformat(info[k]).timestamp() for k in ("StartTime", "EndTime")]
            gpu_jobs.append((got.group(1), span))
    assert len(gpu_jobs) == len(FOLDS)
    assert all(dev in ("0", "1") for dev, _ in gpu_jobs)
    overlapping = [(a, b) for i, a in enumerate(gpu_jobs) for b in gpu_jobs[i + 1:]
                   if a[1][0] < b[1][1] and b[1][0] < a[1][1]]
    assert overlapping, f"the GPU jobs did not run at the same time: {gpu_jobs}"
    for a, b in overlapping:
        assert a[0] != b[0], f"two concurrent jobs saw the same card: {gpu_jobs}"

    # same outputs as the local run of the same config
    local, remote = tiny_run / "results", workdir / "results"
    pd.testing.assert_frame_equal(pd.read_csv(remote / "qc" / "cohort.tsv", sep="\t"),
                                  pd.read_csv(local / "qc" / "cohort.tsv", sep="\t"))
    pd.testing.assert_frame_equal(pd.read_csv(remote / "splits.csv"), pd.read_csv(local / "splits.csv"))
    for table in sorted(local.glob("tiles/*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(remote / "tiles" / table.name), pd.read_parquet(table))
    for fold in FOLDS:
        a = load_file(remote / "dino" / f"fold_{fold}" / "teacher.safetensors")
        b = load_file(local / "dino" / f"fold_{fold}" / "teacher.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    print(f"SLURM run of {len(jobs)} jobs: {wall:.0f} s")
