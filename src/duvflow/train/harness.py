"""The one training harness below every stage's loop (DINO, VAE, LDM, classifier).

A stage builds its model, optimizer and batches and writes its step; :class:`TrainingRun` owns
the rest, in the order of diffusers' training examples:

- seeding (``seed_everything``), the job's threads and the distributed context (one process, or
  one per card under torchrun: :mod:`duvflow.train.distributed`), mixed precision (``autocast``);
- resume with one policy: the newest checkpoint is resumed when the settings it was written
  with equal the current ones *except* the section's run-time-only keys
  (:data:`duvflow.core.config.RUNTIME_KEYS`: device, workers, logging and checkpoint cadence),
  so changing ``num_workers`` after a time-out continues the run instead of discarding it;
- metrics as named columns (``run.log(step=..., loss=...)``), kept in every checkpoint and
  written to the stage's ``metrics.csv`` at the end;
- checkpoints every ``checkpoint_every`` steps (and when the stage asks), the newest
  ``checkpoints_keep`` kept, written by rank 0 only;
- SIGTERM (a SLURM time-out or ``scancel``): the step in progress finishes, a checkpoint of it is
  written and the run exits with :class:`TrainingInterrupted` (exit code 143), so a rerun of the
  rule continues from there;
- rank-0 finalisation (``run.is_main``) and one cleanup path (:meth:`TrainingRun.finish` removes
  the checkpoint folder once the final outputs exist).

Why not Hugging Face ``accelerate``: the loops already shard every global batch so that 2
processes follow the single-process trajectory (``tests/integration/test_ddp.py``), with hand-
reduced gradients for the VAE and LDM; ``Accelerator.prepare`` re-shards DataLoaders itself and
saves state in its own folder layout, so it is not a drop-in for that contract.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from duvflow.core.config import result_settings
from duvflow.core.io import write_csv
from duvflow.core.runtime import autocast, configure_threads, ignore_sigterm, seed_everything
from duvflow.train.checkpoint import CheckpointManager, restore_rng_state, rng_state
from duvflow.train.distributed import init_distributed, wrap_model

__all__ = ["TrainingInterrupted", "TrainingRun"]

_log = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """Training stopped on SIGTERM after checkpointing; rerunning the rule resumes it (exit code 143)."""

    def __init__(self, message: str):
        super().__init__(128 + signal.SIGTERM)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _plain(value: Any) -> Any:
    """NumPy/torch scalars as Python numbers (checkpoints load with ``weights_only=True``)."""
    return value.item() if hasattr(value, "item") else value


class TrainingRun:
    """Seeding, devices, resume, metrics, checkpoints, SIGTERM and cleanup of one training run.

    ``cfg`` is the stage's frozen config (its ``device``, ``checkpoint_every``,
    ``checkpoints_keep`` and, when present, ``mixed_precision`` are used); ``section`` names its
    config section; ``identity`` holds what else the result depends on (seed, fold, data sizes).
    """

    def __init__(self, section: str, cfg: Any, *, checkpoint_dir: str | os.PathLike, seed: int,
                 identity: dict, metric_columns: Sequence[str], threads: int | None = None):
        configure_threads(threads)
        seed_everything(seed)
        self.ctx = init_distributed(cfg.device)
        self.device = self.ctx.device
        self.mixed_precision = bool(getattr(cfg, "mixed_precision", False))
        self.checkpoint_every = cfg.checkpoint_every
        self.folder = Path(checkpoint_dir)
        settings = result_settings(section, dataclasses.asdict(cfg))
        self.checkpoints = CheckpointManager(self.folder, {section: settings, **identity}, keep=cfg.checkpoints_keep)
        self.metric_columns = tuple(metric_columns)
        self.rows: list[dict] = []
        self.tracked: dict[str, Any] = {}
        self.start = 0
        self._saved_step = -1
        self._terminate = threading.Event()
        self.completed = False

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def autocast(self):
        """bf16 autocast on CUDA when the config's ``mixed_precision`` is on; a no-op elsewhere."""
        return autocast(self.device, self.mixed_precision)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel`` over the ranks (the model itself for one process)."""
        return wrap_model(model, self.ctx)

    def loader(self, dataset, batch_sampler, *, num_workers: int, seed: int, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader whose workers ignore SIGTERM and whose creation draws nothing from the global RNG."""
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                           pin_memory=self.device.type == "cuda",
                                           worker_init_fn=ignore_sigterm if num_workers else None,
                                           generator=torch.Generator().manual_seed(seed), **kwargs)

    # ------------------------------------------------------------------ state, resume, checkpoints

    def track(self, **objects: Any) -> None:
        """Objects saved in every checkpoint and restored on resume: modules, optimizers, LR
        schedulers, EMA models (``state_dict``/``load_state_dict``) and ``torch.Generator``s."""
        self.tracked.update(objects)

    def resume(self) -> dict:
        """Restore the tracked objects, the RNG state and the metrics from the newest matching
        checkpoint; sets ``self.start`` and returns the stage's extra state (empty when fresh)."""
        state = self.checkpoints.load_latest()
        if state is None:
            return {}
        for name, obj in self.tracked.items():
            if isinstance(obj, torch.Generator):
                obj.set_state(state["tracked"][name])
            else:
                obj.load_state_dict(state["tracked"][name])
                if hasattr(obj, "to") and not isinstance(obj, torch.nn.Module):  # an EMA model read onto the CPU
                    obj.to(device=self.device)
        restore_rng_state(state["rng"])
        self.rows = list(state["metrics"])
        self.start = self._saved_step = int(state["step"])
        return state["extra"]

    def save(self, step: int, extra: dict | None = None) -> None:
        """Checkpoint after ``step`` steps (rank 0 writes; every rank holds the same state)."""
        self._saved_step = step
        if not self.is_main:
            return
        tracked = {name: obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
                   for name, obj in self.tracked.items()}
        self.checkpoints.save(step, {"tracked": tracked, "rng": rng_state(), "metrics": self.rows,
                                     "extra": extra or {}})

    # ------------------------------------------------------------------ metrics

    def log(self, **row: Any) -> None:
        """One metrics row; its keys must be the run's metric columns (named, never positional)."""
        if tuple(row) != self.metric_columns:
            raise ValueError(f"metrics row {sorted(row)} does not match the columns {list(self.metric_columns)}")
        self.rows.append({k: _plain(v) for k, v in row.items()})

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.metric_columns))

    def write_metrics(self, target: str | os.PathLike) -> pd.DataFrame:
        table = self.metrics()
        write_csv(table, target)
        return table

    # ------------------------------------------------------------------ the step loop

    def steps(self, total: int, batches: Iterable, *, extra=None, stop_after: int | None = None,
              checkpoint_when=None) -> Iterator[tuple[int, Any]]:
        """Yield ``(step, batch)`` for steps ``self.start .. total - 1``; after each step's body:

        * checkpoint when ``done % checkpoint_every == 0`` (before the last step) or when
          ``checkpoint_when(done)`` says so; ``extra()`` gives the stage's plain state to save;
        * on SIGTERM, checkpoint (unless just done) and raise :class:`TrainingInterrupted`;
        * with ``stop_after`` (tests, as a kill would), stop without outputs; :attr:`completed`
          then stays False.
        """
        self.completed = False
        previous = self._install_sigterm()
        try:
            iterator = iter(batches)
            for step in range(self.start, total):
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise RuntimeError(f"the batches ended at step {step} of {total}") from None
                except RuntimeError:  # e.g. a DataLoader worker killed by the same SIGTERM
                    if self._terminate.is_set():
                        self._interrupt(step, extra)
                    raise
                yield step, batch
                done = step + 1
                due = (done < total and self.checkpoint_every and done % self.checkpoint_every == 0) or \
                    (checkpoint_when is not None and checkpoint_when(done))
                if due:
                    self.save(done, extra() if extra else None)
                if self._terminating():
                    self._interrupt(done, extra)
                if stop_after is not None and done >= stop_after and done < total:
                    _log.warning("stopping after step %d as asked; rerun to resume from the last checkpoint", done)
                    return
            self.completed = True
        finally:
            self._restore_sigterm(previous)

    def _install_sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, lambda *_: self._terminate.set())

    @staticmethod
    def _restore_sigterm(previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    def _terminating(self) -> bool:
        """SIGTERM seen here or (data-parallel) on any rank: all ranks stop at the same step."""
        flag = self._terminate.is_set()
        if self.ctx.enabled:
            t = torch.tensor([float(flag)], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def _interrupt(self, done: int, extra) -> None:
        if self._saved_step != done:
            self.save(done, extra() if extra else None)
        message = (f"SIGTERM: stopped after step {done}; checkpoint in {self.folder}; rerun the rule to resume "
                   f"from it")
        _log.warning(message)
        raise TrainingInterrupted(message)

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """After the final outputs are written (rank 0): the resumable state is no longer needed,
        and a forced rerun must train afresh rather than resume the final step."""
        if self.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)
