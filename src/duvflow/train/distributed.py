"""Data-parallel training on the GPUs of one node (``torch.distributed``, one process per card).

A rule whose ``gpu`` resource is above 1 runs its trainer through :meth:`duvflow.gpu.GpuJob.launch`,
which calls :func:`launch`: ``torchrun --standalone --nproc_per_node=<cards>`` starts one worker per
card and each worker calls the trainer with the same arguments. Inside, the trainer uses:

- :func:`init_distributed` -> :class:`DistContext` (rank, world size, device ``cuda:<local rank>``;
  NCCL on CUDA, gloo on the CPU); a single process (no torchrun) gets a context of world size 1
  for which every helper here is a no-op, so one code path serves both;
- :func:`wrap_model` (``DistributedDataParallel``: gradients are averaged over ranks in backward,
  so every rank's optimizer step, EMA teacher and centre stay identical), :func:`unwrap`;
- :func:`shard_batch` / :func:`distributed_sampler`: each rank gets its part of the global batch;
- :func:`all_reduce_mean` for logged metrics and running statistics, :func:`barrier`;
- ``ctx.is_main``: only rank 0 writes checkpoints and outputs.

The batch size in the config stays the *global* batch: ``gpu=4`` trains the same model as
``gpu=1``, faster. Multi-node runs (``torchrun --nnodes``) use the same code but are not tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from duvflow.core.runtime import select_device

__all__ = [
    "DistContext",
    "all_reduce_gradients",
    "all_reduce_mean",
    "barrier",
    "distributed",
    "distributed_sampler",
    "init_distributed",
    "is_main_process",
    "launch",
    "shard_batch",
    "shard_batches",
    "shard_tensors",
    "shutdown",
    "unwrap",
    "wrap_model",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs progress and writes files."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

    Without those variables this is a plain single process on ``select_device(device)``.
    ``device="cpu"`` forces gloo on the CPU even where cards are visible.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=select_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank}: local rank {local_rank} but only {torch.cuda.device_count()} "
                               "visible CUDA device(s); start one process per card")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    _log.info("rank %d/%d (local %d) on %s, backend %s", rank, world, local_rank, dev, backend)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=dev, backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """``with distributed(cfg.device) as ctx:`` -- init, and leave the process group on exit."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        if ctx.enabled:
            shutdown()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wrap_model(model: torch.nn.Module, ctx: DistContext, **kwargs: Any) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when running on several ranks, else ``model`` itself.

    Keep using the unwrapped module for EMA, ``state_dict`` and saving; call the wrapper only for
    the training forward pass (its backward averages the gradients).
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def shard_batch(items: Sequence, ctx: DistContext) -> list:
    """This rank's contiguous part of a global batch (rank r: items ``[r*b, (r+1)*b)``).

    Contiguous shards keep the global batch order, so the concatenation over ranks is the batch a
    single process would see. The global batch must divide evenly (unequal shards would weigh
    samples unequally in the averaged gradient).
    """
    items = list(items)
    lo, hi = _bounds(len(items), ctx)
    return items[lo:hi]


class _ShardedBatches:
    """Wraps a batch sampler (yielding global batches) so each rank yields only its shard."""

    def __init__(self, batch_sampler, ctx: DistContext):
        self.batch_sampler, self.ctx = batch_sampler, ctx

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for batch in self.batch_sampler:
            yield shard_batch(batch, self.ctx)


def shard_batches(batch_sampler, ctx: DistContext):
    """A batch sampler of global batches -> one of this rank's shards (the sampler itself when alone)."""
    return _ShardedBatches(batch_sampler, ctx) if ctx.enabled else batch_sampler


def shard_tensors(tensors: Sequence[torch.Tensor], ctx: DistContext) -> list[torch.Tensor]:
    """This rank's contiguous part (along dim 0) of each tensor of a global batch.

    For loops that draw the whole global batch from one generator on every rank (cheap for cached
    latents and noise): every rank then trains on exactly its slice of the single-process batch.
    """
    lo, hi = _bounds(len(tensors[0]), ctx)
    return [t[lo:hi] for t in tensors]


def _bounds(n: int, ctx: DistContext) -> tuple[int, int]:
    if not ctx.enabled:
        return 0, n
    if n % ctx.world_size:
        raise ValueError(f"a batch of {n} does not split evenly over {ctx.world_size} processes; "
                         "choose a batch size divisible by the rule's gpu count")
    b = n // ctx.world_size
    return ctx.rank * b, (ctx.rank + 1) * b


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over ranks (after ``backward``, before clipping/stepping).

    The hand-written counterpart of DDP for loops that train several modules together: one flat
    all-reduce; a parameter without a gradient on this rank counts as a zero gradient, so every
    rank joins the same collective.
    """
    if not ctx.enabled:
        return
    trainable = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(trainable, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def distributed_sampler(dataset, ctx: DistContext, *, shuffle: bool = True, seed: int = 0,
                        drop_last: bool = True):
    """``DistributedSampler`` for epoch-style loops (call ``sampler.set_epoch(e)`` every epoch), or
    None for a single process (use the DataLoader's own shuffling). ``batch_size`` of the loader is
    then the per-rank batch: global batch // world size."""
    if not ctx.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place (and returned); identity for a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def barrier(ctx: DistContext | None = None) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------------- launching


def _log_stream():
    """Workers write to the job's log: the stream ``setup_logging`` put on ``sys.stderr``."""
    try:
        sys.stderr.flush()
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """Snakemake's path and list types as plain ``str``/``list`` (what the workers unpickle)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def launch(fn: Callable[..., Any], kwargs: dict[str, Any], nproc: int, *, threads: int | None = None) -> Any:
    """Run ``fn(**kwargs)`` in ``nproc`` processes under torchrun on this node; return rank 0's result.

    ``fn`` must be importable at module level (workers import it by name). The job's ``threads``
    (``kwargs["threads"]`` unless given) are divided between the workers.
    """
    target = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or fn.__module__ == "__main__":
        raise ValueError(f"{target} is not importable by name; the workers could not find it")
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    threads = threads if threads is not None else kwargs.get("threads")
    env = dict(os.environ)
    if threads:
        per_rank = max(1, int(threads) // nproc)
        env["OMP_NUM_THREADS"] = str(per_rank)  # torchrun would otherwise force 1
        if "threads" in kwargs:
            kwargs["threads"] = per_rank
    with tempfile.TemporaryDirectory(prefix="duvflow-ddp-") as tmp:
        spec, result = os.path.join(tmp, "spec.pkl"), os.path.join(tmp, "result.pkl")
        with open(spec, "wb") as fh:
            pickle.dump({"target": target, "kwargs": kwargs, "result": result}, fh)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "duvflow.train.distributed", spec]
        _log.info("launching %d data-parallel processes: %s", nproc, target)
        stream = _log_stream()
        proc = subprocess.run(cmd, env=env, stdout=stream, stderr=stream, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"data-parallel run of {target} on {nproc} processes failed (exit code "
                               f"{proc.returncode}); the workers' errors are in this job's log above")
        with open(result, "rb") as fh:
            return pickle.load(fh)


def _worker(spec_path: str) -> None:
    """Entry point of one torchrun worker: log with the rank, call the target, rank 0 saves its result."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    logging.captureWarnings(True)
    if rank != 0:
        os.environ.setdefault("DUVFLOW_PROGRESS", "0")  # one progress bar, from rank 0
    with open(spec_path, "rb") as fh:
        spec = pickle.load(fh)
    module, _, name = spec["target"].partition(":")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    try:
        out = fn(**spec["kwargs"])
    finally:
        shutdown()
    if rank == 0:
        tmp = spec["result"] + ".tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(out, fh)
        os.replace(tmp, spec["result"])


if __name__ == "__main__":
    _worker(sys.argv[1])
