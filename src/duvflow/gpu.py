"""GPU device allocation for rule jobs, so concurrent jobs never share a card by accident.

Snakemake counts a ``gpu`` resource (``snakemake --cores 16 --resources gpu=2``) but does not
tell a local job *which* card to use: without help every job would pick device 0. Each GPU rule's
entry point therefore wraps its work in :func:`gpu_job`, which takes the rule's ``gpu`` count,
claims that many device ids with ``fcntl`` locks (one lock file per id, in a directory shared by
every job on the machine) and sets ``CUDA_VISIBLE_DEVICES`` before torch touches CUDA. A lock
vanishes when its process exits, also when it is killed, so nothing stays claimed after a crash.

Device ids come from, in order: ``DUVFLOW_GPU_IDS`` (an explicit list, e.g. to keep a workflow
off some cards, or fake ids in tests), an inherited ``CUDA_VISIBLE_DEVICES`` (ids, UUIDs or MIG
ids; jobs divide that set among themselves), or one id per ``/dev/nvidia<N>`` device file. Under
SLURM the job's ``CUDA_VISIBLE_DEVICES`` is what SLURM granted; locks are then kept per SLURM job
id, so a job submitted on its own simply takes its devices, while a local Snakemake run inside one
multi-GPU allocation still divides the allocation among its jobs. A job that asks for GPUs when
none is visible runs on the CPU with a warning; a job with ``gpu=0`` gets all cards hidden.
Inside an allocation (a nested call, or the torchrun workers a job starts) the cards already
claimed are reused, not claimed twice.

Environment: ``DUVFLOW_GPU_LOCK_DIR`` (lock directory, default ``$TMPDIR/duvflow-gpu-locks``),
``DUVFLOW_GPU_TIMEOUT`` (seconds to wait for free cards, default one day).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import logging
import os
import random
import re
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "GpuAllocationError",
    "GpuJob",
    "allocate_gpus",
    "candidate_ids",
    "gpu_count",
    "gpu_job",
    "visible_gpu_count",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 24 * 3600.0  # another workflow's training may hold a card for hours
_HELD_VAR = "DUVFLOW_GPU_ALLOCATED"  # set while this process (tree) holds cards
_POLL_S = (0.05, 0.5)  # random back-off between attempts, so waiting jobs don't move in lockstep


class GpuAllocationError(RuntimeError):
    """No free device within the timeout, or CUDA was initialised before allocation."""


@dataclasses.dataclass(frozen=True)
class GpuJob:
    """What a job got: ``devices`` are the ids now in ``CUDA_VISIBLE_DEVICES`` (empty = CPU)."""

    devices: tuple[str, ...]
    requested: int

    @property
    def nproc(self) -> int:
        """Processes for data-parallel training: one per device, one on the CPU."""
        return max(1, len(self.devices))

    def launch(self, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        """Run a DDP-aware training function: directly with one device (or none), else once per
        device under ``torchrun`` (see :func:`duvflow.train.distributed.launch`).

        Functions that are not DDP-aware (embedding, sampling) are simply called inside the
        ``with gpu_job(...)`` block instead.
        """
        if self.nproc == 1:
            return fn(**kwargs)
        from duvflow.train.distributed import launch

        return launch(fn, kwargs, nproc=self.nproc)


def gpu_count(resources: Any) -> int:
    """The ``gpu`` resource of a rule: from ``snakemake.resources``, a mapping or an int.

    Without ``gpu``, a SLURM-style ``gres`` resource (``gpu:2``, ``gpu:a100:2``, ``gpu``) counts.
    """
    if resources is None:
        return 0
    if isinstance(resources, int | float | str):
        value = resources
    else:
        get = resources.get if isinstance(resources, Mapping) else lambda k, d: getattr(resources, k, d)
        value = get("gpu", 0)
        gres = get("gres", None)
        if not value and isinstance(gres, str):
            m = re.fullmatch(r"gpu(?::[A-Za-z0-9_.]+)??(?::(\d+))?", gres.strip())
            if m:
                value = int(m.group(1) or 1)
    try:
        count = int(value or 0)
    except (TypeError, ValueError):
        raise ValueError(f"the rule's gpu resource must be a whole number, got {value!r}") from None
    if count < 0:
        raise ValueError(f"the rule's gpu resource must be >= 0, got {count}")
    return count


def candidate_ids(environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """Device ids this process may use and where they came from."""
    env = os.environ if environ is None else environ
    order = ("DUVFLOW_GPU_IDS", "CUDA_VISIBLE_DEVICES")
    if env.get("SLURM_JOB_ID") and "CUDA_VISIBLE_DEVICES" in env:
        order = order[::-1]  # what SLURM granted beats ids exported from the submitting shell
    for var in order:
        if var in env:
            # "-1" or "" hide every card (a CUDA convention); "NoDevFiles" is what SLURM writes
            # when a job has a gres but no device files.
            ids = [s.strip() for s in env[var].split(",") if s.strip()]
            if ids and ids[0] in ("-1", "NoDevFiles"):
                ids = []
            return ids, var
    found = []
    for path in glob.glob("/dev/nvidia[0-9]*"):
        m = re.fullmatch(r"/dev/nvidia(\d+)", path)
        if m:
            found.append(int(m.group(1)))
    return [str(i) for i in sorted(found)], "/dev/nvidia*"


def visible_gpu_count() -> int:
    """How many cards jobs here can share; ``workflow/profiles/default`` caps concurrent GPU jobs with it."""
    return len(candidate_ids()[0])


def _lock_root(lock_dir: str | os.PathLike | None, environ: Mapping[str, str]) -> str:
    root = lock_dir or environ.get("DUVFLOW_GPU_LOCK_DIR") or os.path.join(tempfile.gettempdir(), "duvflow-gpu-locks")
    # Under SLURM, ids are relative to the job's own grant: keep its locks apart.
    scope = f"slurm-{environ['SLURM_JOB_ID']}" if environ.get("SLURM_JOB_ID") else "local"
    path = os.path.join(os.fspath(root), scope)
    os.makedirs(path, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the machine; sticky like /tmp
        os.chmod(root, 0o1777)
        os.chmod(path, 0o1777)
    return path


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", device) + ".lock"


def _open_lock(path: str) -> int:
    old = os.umask(0)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    finally:
        os.umask(old)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _holders(lock_dir: str, ids: list[str]) -> str:
    parts = []
    for dev in ids:
        with contextlib.suppress(OSError):
            with open(os.path.join(lock_dir, _lock_name(dev))) as fh:
                text = fh.read().strip()
            if text:
                parts.append(f"{dev}: {text}")
    return "; ".join(parts) or "unknown holders"


@contextlib.contextmanager
def allocate_gpus(
    n: int,
    *,
    timeout: float | None = None,
    lock_dir: str | os.PathLike | None = None,
    label: str = "",
) -> Iterator[GpuJob]:
    """Claim ``n`` device ids for the duration of the block and expose only them to CUDA.

    Blocks while the cards are taken by other jobs, up to ``timeout`` seconds (then
    :class:`GpuAllocationError` names the holders). All ``n`` are claimed at once under a mutex,
    so two jobs that each want two cards of three cannot deadlock holding one each.
    ``CUDA_VISIBLE_DEVICES`` is restored on exit.
    """
    env = os.environ
    previous = env.get("CUDA_VISIBLE_DEVICES")
    if _HELD_VAR in env:
        # An enclosing allocation (this process, or the parent that launched this torchrun
        # worker) already holds the cards: use them, claim nothing twice.
        yield GpuJob(devices=tuple(d for d in env[_HELD_VAR].split(",") if d), requested=n)
        return
    _check_cuda_not_initialised()
    ids, source = candidate_ids(env)
    if n == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job must not wander onto a card nobody claimed
        try:
            yield GpuJob(devices=(), requested=0)
        finally:
            _restore(previous)
        return
    if not ids:
        warnings.warn(f"the job asked for {n} GPU(s) but none is visible ({source}); it runs on the CPU",
                      RuntimeWarning, stacklevel=3)
        yield GpuJob(devices=(), requested=n)
        return
    if n > len(ids):
        warnings.warn(f"the job asked for {n} GPU(s) but only {len(ids)} are visible ({', '.join(ids)}); "
                      f"it uses {len(ids)}", RuntimeWarning, stacklevel=3)
        n = len(ids)
    if timeout is None:
        timeout = float(env.get("DUVFLOW_GPU_TIMEOUT", DEFAULT_TIMEOUT_S))

    root = _lock_root(lock_dir, env)
    held = _acquire(root, ids, n, timeout, label)
    devices = tuple(dev for dev, _ in held)
    env["CUDA_VISIBLE_DEVICES"] = env[_HELD_VAR] = ",".join(devices)
    if source == "/dev/nvidia*":
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # our ids then match nvidia-smi's
    _log.info("GPU(s) %s allocated (from %s; locks in %s)", ",".join(devices), source, root)
    try:
        yield GpuJob(devices=devices, requested=n)
    finally:
        for _, fd in held:
            os.close(fd)  # closing drops the flock
        env.pop(_HELD_VAR, None)
        _restore(previous)


def _acquire(root: str, ids: list[str], n: int, timeout: float, label: str) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    mutex = _open_lock(os.path.join(root, ".mutex"))
    announced = False
    try:
        while True:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            held: list[tuple[str, int]] = []
            try:
                for dev in ids:
                    fd = _open_lock(os.path.join(root, _lock_name(dev)))
                    if _try_lock(fd):
                        held.append((dev, fd))
                        if len(held) == n:
                            break
                    else:
                        os.close(fd)
                if len(held) == n:
                    stamp = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} {label}"
                    for _, fd in held:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, stamp.strip().encode() + b"\n", 0)
                    return held
                for _, fd in held:
                    os.close(fd)
            finally:
                fcntl.flock(mutex, fcntl.LOCK_UN)
            if time.monotonic() >= deadline:
                raise GpuAllocationError(
                    f"no {n} free GPU(s) among {', '.join(ids)} after {timeout:g} s "
                    f"(held by {_holders(root, ids)}; locks in {root}). Is `--resources gpu=` larger than "
                    "the number of cards, or is another workflow using them? DUVFLOW_GPU_TIMEOUT sets the wait.")
            if not announced:
                _log.info("waiting for %d free GPU(s) among %s (held by %s)", n, ",".join(ids), _holders(root, ids))
                announced = True
            time.sleep(random.uniform(*_POLL_S))
    finally:
        os.close(mutex)


def _restore(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = previous


def _check_cuda_not_initialised() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise GpuAllocationError("CUDA was initialised before the GPU allocation; enter gpu_job()/allocate_gpus() "
                                 "before any torch.cuda call so CUDA_VISIBLE_DEVICES can take effect")


@contextlib.contextmanager
def gpu_job(resources: Any, **kwargs: Any) -> Iterator[GpuJob]:
    """The GPU rule entry points' helper: ``with gpu_job(snakemake.resources) as job: ...``.

    Claims the rule's ``gpu`` resource worth of cards (see :func:`allocate_gpus`); inside the
    block ``duvflow.core.runtime.select_device()`` returns the claimed card (or the CPU, with a warning,
    where there is none) and ``job.launch(train_fn, **kw)`` runs a DDP-aware trainer on all of them.
    """
    with allocate_gpus(gpu_count(resources), **kwargs) as job:
        yield job
