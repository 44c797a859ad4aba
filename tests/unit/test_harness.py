"""The training harness: named metric columns, checkpoint pruning, the one resume policy, SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal

import pandas as pd
import pytest
import torch

from duvflow.core.config import RUNTIME_KEYS
from duvflow.train.batches import StepBatches
from duvflow.train.harness import TrainingInterrupted, TrainingRun

SECTION = "vae"  # any section with run-time keys; the harness only filters by name


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    lr: float = 0.1
    steps: int = 10
    checkpoint_every: int = 2
    checkpoints_keep: int = 2
    log_every: int = 1
    num_workers: int = 0
    device: str = "cpu"


def _run(folder, cfg=TinyConfig(), columns=("step", "loss")):
    return TrainingRun(SECTION, cfg, checkpoint_dir=folder, seed=3, identity={"fold": "0"}, metric_columns=columns)


def _train(folder, cfg=TinyConfig(), stop_after=None, on_step=None):
    """A linear model fitted by SGD on a fixed batch order; returns (run, model)."""
    run = _run(folder, cfg)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    run.track(model=model, optimizer=optimizer)
    run.resume()
    order = StepBatches(16, 4, seed=1)
    for step, rows in run.steps(cfg.steps, map(order, range(run.start, cfg.steps)), stop_after=stop_after):
        loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log(step=step + 1, loss=loss.item())
        if on_step is not None:
            on_step(step)
    return run, model


def test_metrics_are_named_columns_and_checkpoints_are_pruned(tmp_path):
    run, _ = _train(tmp_path / "ckpt", stop_after=7)
    assert not run.completed
    # checkpoints after steps 2, 4, 6; the newest two kept
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    table = run.write_metrics(tmp_path / "metrics.csv")
    on_disk = pd.read_csv(tmp_path / "metrics.csv")
    assert list(on_disk.columns) == ["step", "loss"] and on_disk["step"].tolist() == list(range(1, 8))
    pd.testing.assert_frame_equal(on_disk, table)
    with pytest.raises(ValueError, match="does not match the columns"):
        run.log(loss=1.0, step=8)  # named, in the declared order
    with pytest.raises(ValueError, match="does not match the columns"):
        run.log(step=8)


def test_resume_ignores_run_time_keys_only(tmp_path, caplog):
    assert {"num_workers", "log_every", "device", "checkpoint_every"} <= RUNTIME_KEYS[SECTION]
    _, reference = _train(tmp_path / "full")
    _train(tmp_path / "cut", stop_after=5)
    changed = TinyConfig(num_workers=2, log_every=5, checkpoint_every=3, device="cpu")
    with caplog.at_level(logging.INFO, logger="duvflow.train.checkpoint"):
        run, resumed = _train(tmp_path / "cut", cfg=changed)
    assert "resuming from" in caplog.text and "step 4" in caplog.text
    assert run.completed and [r["step"] for r in run.rows] == list(range(1, 11))  # step 5 redone, logged once
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a result-relevant setting invalidates the checkpoint
    _train(tmp_path / "other", stop_after=5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="duvflow.train.checkpoint"):
        run, _ = _train(tmp_path / "other", cfg=TinyConfig(lr=0.05))
    assert "different configuration" in caplog.text and run.rows[0]["step"] == 1


def test_sigterm_checkpoints_the_step_in_progress_and_exits_non_zero(tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def terminate(step):
        if step == 2:  # during step 3: between the checkpoints of steps 2 and 4
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as err:
        _train(tmp_path / "ckpt", on_step=terminate)
    assert err.value.code == 128 + signal.SIGTERM and "rerun" in str(err.value)
    assert (tmp_path / "ckpt" / "checkpoint-00000003.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the harness's only while it trains
    run, resumed = _train(tmp_path / "ckpt")
    _, reference = _train(tmp_path / "full")
    assert [r["step"] for r in run.rows] == list(range(1, 11))
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    run.finish()
    assert not (tmp_path / "ckpt").exists()


def test_step_batches_balance_and_are_a_function_of_step():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = 1.0 / torch.bincount(labels).double()[labels]
    a, b = StepBatches(100, 20, seed=4, weights=weights), StepBatches(100, 20, seed=4, weights=weights)
    seq = [a(s).tolist() for s in range(10)]
    assert [b(s).tolist() for s in (7, 0)] == [seq[7], seq[0]]
    drawn = torch.tensor([i for batch in seq for i in batch])
    assert 0.3 < labels[drawn].float().mean() < 0.7
    assert a.seeds(3) == b.seeds(3) and len(set(a.seeds(3))) == 20
