"""Batches of raw patches for the SSL stages: DataLoader workers only decode uint8 patches; every
resampling and augmentation runs batched on the device (see :mod:`duvflow.ssl.augment`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EpochBatchSampler", "as_uint8_tensor", "collate_patches", "to_device_float"]


def as_uint8_tensor(patch: np.ndarray) -> torch.Tensor:
    """PatchDataset transform: keep the uint8 HWC patch (4x less to copy between processes than float)."""
    return torch.from_numpy(np.ascontiguousarray(patch))


def collate_patches(items):
    """``[(uint8 HWC, label, row), ...]`` -> ``(uint8 (B, H, W, 3), sizes (B, 2), labels, rows)``.

    Slides tiled at different pixel sizes (``patch_um`` with different MPPs) give patches of
    different edges: they are zero-padded to the largest one and ``sizes`` keeps each valid extent.
    """
    images, labels, rows = zip(*items, strict=True)
    sizes = torch.tensor([img.shape[:2] for img in images], dtype=torch.int64)
    if bool((sizes == sizes[0]).all()):
        batch = torch.stack(images)
    else:
        h, w = (int(v) for v in sizes.max(dim=0).values)
        batch = torch.zeros((len(images), h, w, 3), dtype=torch.uint8)
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1]] = img
    return batch, sizes, torch.tensor(labels), torch.tensor(rows)


def to_device_float(batch: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] on ``device`` (converted after the copy)."""
    return batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


class EpochBatchSampler:
    """Shuffled batches for steps ``start .. total - 1`` (``steps_per_epoch`` full batches per epoch),
    each a list of ``(step, row)`` pairs (the step seeds that batch's augmentation, wherever it runs).

    Epoch ``e`` is a permutation drawn from ``seed + e``, so the batch of any step is known without
    replaying earlier ones: a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, batch_size: int, steps_per_epoch: int, total_steps: int, seed: int, start: int = 0):
        self.n, self.batch_size, self.steps_per_epoch = n, batch_size, steps_per_epoch
        self.total, self.seed, self.start = total_steps, seed, start

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, j = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
                perm_epoch = epoch
            yield [(step, i) for i in perm[j * self.batch_size: (j + 1) * self.batch_size]]
