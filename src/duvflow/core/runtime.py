"""Run-time plumbing shared by every stage: logging for rule entry points, device choice, seeds.

Only entry points (``workflow/scripts/*.py``, the CLI) configure logging; modules log through
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import warnings

__all__ = ["autocast", "configure_threads", "exit_on_sigterm", "progress", "seed_everything", "select_device",
           "setup_logging"]

_log = logging.getLogger(__name__)


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Send log records (and warnings) to ``log_path`` and stderr; stderr itself is redirected to
    the log file too so tracebacks from a crashing rule end up in the rule's log."""
    handlers: list[logging.Handler] = []
    if log_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives for the process
        sys.stderr = log_file
        handlers.append(logging.StreamHandler(log_file))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    exit_on_sigterm()


def exit_on_sigterm() -> None:
    """Turn SIGTERM (SLURM time-out, ``scancel``, Snakemake stopping) into ``SystemExit(143)`` in the
    main thread, so ``with`` blocks and ``finally`` clauses run: atomic writers remove their
    temporary files instead of leaving them behind."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # only the main thread may install handlers
        signal.signal(signal.SIGTERM, _exit)


def configure_threads(threads: int | None) -> None:
    """Honour the rule's ``threads`` in torch (and BLAS) so jobs don't oversubscribe cores."""
    if not threads:
        return
    import torch

    torch.set_num_threads(int(threads))
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(max(1, min(int(threads), 4)))


def select_device(preferred: str = "auto"):
    """The torch device a job should use.

    ``auto`` takes CUDA when a card is visible, else the CPU; asking for ``cuda`` without a
    visible card falls back to the CPU with a warning (a GPU-tagged job scheduled on a CPU node
    still finishes, only slower).
    """
    import torch

    if preferred == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        # TF32 for the fp32 parts (VAE training, fp32 configs), as diffusers' --allow_tf32: ~1e-3
        # relative error, far below what training noise does, several times the fp32 speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    if preferred not in ("auto", "cpu"):
        warnings.warn(f"device {preferred!r} requested but no CUDA device is visible; running on the CPU",
                      RuntimeWarning, stacklevel=2)
    return torch.device("cpu")


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA cards that support it; a no-op context elsewhere.

    CPU bf16 autocast is faster for inference but changes training numerics; callers that want
    it on the CPU pass ``cpu_bf16=True`` through :func:`autocast_cpu` instead.
    """
    import torch

    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def progress(iterable=None, **kwargs):
    """A tqdm bar on an interactive terminal or a local log, off under SLURM (log files would fill
    with carriage-return lines); ``DUVFLOW_PROGRESS=0/1`` forces it."""
    from tqdm.auto import tqdm

    forced = os.environ.get("DUVFLOW_PROGRESS")
    disable = (forced == "0") if forced is not None else "SLURM_JOB_ID" in os.environ
    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=disable, **kwargs)
