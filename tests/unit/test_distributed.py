"""DDP helpers without a process group (the 2-process gloo run is tests/integration/test_ddp.py)."""

import pytest
import torch

from duvflow.train.distributed import DistContext, all_reduce_mean, launch, shard_batch, shard_batches, wrap_model


def test_single_process_helpers_are_no_ops():
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model
    t = torch.tensor([3.0])
    assert all_reduce_mean(t, ctx).item() == 3.0
    assert shard_batch([1, 2, 3], ctx) == [1, 2, 3]
    sampler = [[1, 2], [3, 4]]
    assert shard_batches(sampler, ctx) is sampler


def test_shards_are_contiguous_and_must_divide_evenly():
    ctx = DistContext(rank=1, world_size=2)
    assert shard_batch(list(range(6)), ctx) == [3, 4, 5]
    assert list(shard_batches([[0, 1, 2, 3], [4, 5, 6, 7]], ctx)) == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="divisible by the rule's gpu count"):
        shard_batch(list(range(5)), ctx)


def test_launch_refuses_functions_workers_cannot_import():
    with pytest.raises(ValueError, match="not importable"):
        launch(lambda: None, {}, nproc=2)
