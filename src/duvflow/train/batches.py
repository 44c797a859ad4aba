"""The batch order of every training loop: the batch of step ``s`` is a pure function of ``(seed, s)``.

Epoch ``e`` (``per_epoch`` full batches) is drawn from its own generator seeded ``seed + e``:
shuffled without replacement (permutations concatenated when a batch is larger than the data),
or, with ``weights``, drawn with replacement in proportion to them (class balancing). A run
resumed at any step therefore sees exactly the batches an uninterrupted one would, with any
number of DataLoader workers or data-parallel processes (each takes its shard of the global
batch, :func:`duvflow.train.distributed.shard_batches`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["StepBatches", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s random augmentation: reproducible wherever it runs and after a resume."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


class StepBatches:
    """``batches(step)`` -> the sample indices (LongTensor) of that step's global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, *, weights=None):
        if n <= 0:
            raise ValueError("no training samples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._order, self._seeds, self._gen = -1, None, None, None

    def _draw(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        g = torch.Generator().manual_seed(self.seed + epoch)
        need = self.per_epoch * self.batch_size
        if self.weights is None:
            order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])[:need]
        else:
            order = torch.multinomial(self.weights, need, replacement=True, generator=g)
        self._epoch, self._order, self._seeds, self._gen = epoch, order, None, g

    def __call__(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        self._draw(epoch)
        return self._order[pos * self.batch_size:(pos + 1) * self.batch_size]

    def seeds(self, step: int) -> list[int]:
        """One augmentation seed per sample of step ``step``'s batch (drawn after the epoch's order)."""
        epoch, pos = divmod(step, self.per_epoch)
        self._draw(epoch)
        if self._seeds is None:
            self._seeds = torch.randint(0, 2**62, (len(self._order),), generator=self._gen)
        return self._seeds[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()

    def sampler(self, start: int, total: int, key: Callable[[int, list[int]], list] | None = None) -> _Sampler:
        """A DataLoader ``batch_sampler`` over steps ``start .. total - 1``; ``key(step, rows)`` turns a
        batch's rows into the dataset's keys (default: the rows)."""
        return _Sampler(self, start, total, key)


class _Sampler:
    def __init__(self, batches: StepBatches, start: int, total: int, key):
        self.batches, self.start, self.total, self.key = batches, start, total, key

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for step in range(self.start, self.total):
            rows = self.batches(step).tolist()
            yield rows if self.key is None else self.key(step, rows)
