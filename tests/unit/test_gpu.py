"""The lock-file GPU allocator, with fake device ids on the CPU (DUVFLOW_GPU_IDS)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from duvflow.gpu import GpuAllocationError, allocate_gpus, candidate_ids, gpu_count, gpu_job

# A job that claims `n` GPUs, reports what it got, then holds them until its stop file appears.
HOLDER = textwrap.dedent("""
    import os, sys, time
    from duvflow.gpu import allocate_gpus
    n, report, stop, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    try:
        with allocate_gpus(n, timeout=timeout) as job:
            with open(report + ".tmp", "w") as fh:
                fh.write(os.environ["CUDA_VISIBLE_DEVICES"])
            os.replace(report + ".tmp", report)
            while not os.path.exists(stop):
                time.sleep(0.02)
    except Exception as err:
        with open(report + ".err", "w") as fh:
            fh.write(f"{type(err).__name__}: {err}")
        sys.exit(3)
""")


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    def set_ids(ids):
        monkeypatch.setenv("DUVFLOW_GPU_IDS", ids)
        monkeypatch.setenv("DUVFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    return set_ids


def _start(tmp_path, name, n, timeout=30.0):
    report, stop = tmp_path / f"{name}.got", tmp_path / f"{name}.stop"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(n), str(report), str(stop), str(timeout)])
    return proc, report, stop


def _wait_for(path, proc=None, seconds=20.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    return None


def test_gpu_count_reads_snakemake_style_resources():
    class Resources:  # snakemake.resources exposes resources as attributes
        gpu = 2
        mem_mb = 100

    assert gpu_count(Resources()) == 2
    assert gpu_count({"gpu": 1}) == 1
    assert gpu_count({"mem_mb": 5}) == 0
    assert gpu_count(None) == 0
    assert gpu_count({"gres": "gpu:a100:2"}) == 2  # clusters that take --gres instead of --gpus
    assert gpu_count({"gres": "gpu:3"}) == 3 and gpu_count({"gres": "gpu"}) == 1
    assert gpu_count({"gpu": 0, "gres": "tmpdisk:10G"}) == 0
    with pytest.raises(ValueError, match="gpu resource"):
        gpu_count({"gpu": "two"})


def test_candidate_ids_order_and_hiding():
    assert candidate_ids({"DUVFLOW_GPU_IDS": "2,3", "CUDA_VISIBLE_DEVICES": "0"}) == (["2", "3"], "DUVFLOW_GPU_IDS")
    assert candidate_ids({"CUDA_VISIBLE_DEVICES": "GPU-ab12, 1"}) == (["GPU-ab12", "1"], "CUDA_VISIBLE_DEVICES")
    assert candidate_ids({"CUDA_VISIBLE_DEVICES": ""})[0] == []
    slurm = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "1", "DUVFLOW_GPU_IDS": "0,1,2"}
    assert candidate_ids(slurm) == (["1"], "CUDA_VISIBLE_DEVICES")  # SLURM's grant wins
    assert candidate_ids({"CUDA_VISIBLE_DEVICES": "-1"})[0] == []
    assert candidate_ids({"CUDA_VISIBLE_DEVICES": "NoDevFiles"})[0] == []


def test_allocation_sets_and_restores_cuda_visible_devices(fake_gpus):
    fake_gpus("0,1,2")
    with allocate_gpus(2) as job:
        assert job.devices == ("0", "1") and job.nproc == 2
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        with allocate_gpus(1) as inner:  # nested (or a torchrun worker): reuses, claims nothing
            assert inner.devices == ("0", "1")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with allocate_gpus(3) as job:  # released on exit
        assert job.devices == ("0", "1", "2")


def test_inherited_cuda_visible_devices_are_divided(tmp_path, monkeypatch):
    monkeypatch.delenv("DUVFLOW_GPU_IDS", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("DUVFLOW_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    a, a_got, a_stop = _start(tmp_path, "a", 1)
    b, b_got, b_stop = _start(tmp_path, "b", 1)
    assert {_wait_for(a_got, a), _wait_for(b_got, b)} == {"5", "7"}
    a_stop.touch(), b_stop.touch()
    assert a.wait(20) == 0 and b.wait(20) == 0
    with allocate_gpus(2, timeout=5) as job:
        assert job.devices == ("5", "7")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"


def test_slurm_jobs_lock_within_their_own_grant(tmp_path, monkeypatch):
    # Two SLURM jobs on one node may both see CUDA_VISIBLE_DEVICES=0 (cgroup-relative ids):
    # they must not block each other.
    monkeypatch.delenv("DUVFLOW_GPU_IDS", raising=False)
    monkeypatch.setenv("DUVFLOW_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    a, a_got, a_stop = _start(tmp_path, "a", 1)
    try:
        assert _wait_for(a_got, a) == "0"
        monkeypatch.setenv("SLURM_JOB_ID", "102")
        with allocate_gpus(1, timeout=0.2) as other_job:
            assert other_job.devices == ("0",)
        monkeypatch.setenv("SLURM_JOB_ID", "101")  # a second step of job 101 must wait
        with pytest.raises(GpuAllocationError, match="held by 0: pid"), allocate_gpus(1, timeout=0.2):
            pass
    finally:
        a_stop.touch()
        a.wait(20)


def test_gpu_zero_hides_every_card(fake_gpus):
    fake_gpus("0,1")
    with gpu_job({"gpu": 0}) as job:
        assert job.devices == () and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_no_visible_gpu_falls_back_to_cpu_with_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("DUVFLOW_GPU_IDS", "")
    monkeypatch.setenv("DUVFLOW_GPU_LOCK_DIR", str(tmp_path))
    def run_job():
        with gpu_job({"gpu": 1}) as job:
            return job, job.launch(lambda x: x + 1, x=1)  # one process: a plain call

    with pytest.warns(RuntimeWarning, match="runs on the CPU"):
        job, result = run_job()
    assert job.devices == () and job.nproc == 1 and result == 2


def test_more_requested_than_visible_uses_what_there_is(fake_gpus):
    fake_gpus("0")
    with pytest.warns(RuntimeWarning, match="only 1 are visible"), allocate_gpus(2) as job:
        assert job.devices == ("0",)


def test_cuda_initialised_first_is_an_error(fake_gpus, monkeypatch):
    import torch

    fake_gpus("0")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(GpuAllocationError, match="before any torch.cuda call"), allocate_gpus(1):
        pass


def test_concurrent_processes_never_share_and_third_waits_or_fails(fake_gpus, tmp_path):
    fake_gpus("0,1")
    a, a_got, a_stop = _start(tmp_path, "a", 1)
    b, b_got, b_stop = _start(tmp_path, "b", 1)
    try:
        got = {_wait_for(a_got, a), _wait_for(b_got, b)}
        assert got == {"0", "1"}, got
        # both cards taken: a third job with a short timeout fails, naming the holders
        c, _, _ = _start(tmp_path, "c", 1, timeout=0.5)
        assert c.wait(20) == 3
        err = (tmp_path / "c.got.err").read_text()
        assert "GpuAllocationError" in err and "no 1 free GPU" in err and "pid" in err
        # a patient third job gets the card a finished holder gives back
        d, d_got, d_stop = _start(tmp_path, "d", 1, timeout=30)
        time.sleep(0.5)
        assert not d_got.exists()
        a_stop.touch()
        assert a.wait(20) == 0
        assert _wait_for(d_got, d) == a_got.read_text()
        d_stop.touch()
        assert d.wait(20) == 0
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        b_stop.touch()


def test_a_killed_holder_releases_its_card(fake_gpus, tmp_path):
    fake_gpus("0")
    a, a_got, _ = _start(tmp_path, "a", 1)
    assert _wait_for(a_got, a) == "0"
    os.kill(a.pid, signal.SIGKILL)
    a.wait(20)
    with allocate_gpus(1, timeout=5) as job:
        assert job.devices == ("0",)


def test_multi_card_jobs_do_not_deadlock(fake_gpus, tmp_path):
    # Two jobs wanting 2 of 3 cards: all-at-once claiming means one runs, the other waits.
    fake_gpus("0,1,2")
    a, a_got, a_stop = _start(tmp_path, "a", 2)
    assert len(_wait_for(a_got, a).split(",")) == 2
    b, b_got, b_stop = _start(tmp_path, "b", 2)
    time.sleep(0.5)
    assert not b_got.exists() and b.poll() is None
    a_stop.touch()
    assert a.wait(20) == 0
    assert len(_wait_for(b_got, b).split(",")) == 2
    b_stop.touch()
    assert b.wait(20) == 0
