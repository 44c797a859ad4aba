"""Batches of raw patches for the SSL stages: DataLoader workers only decode uint8 patches; every
resampling and augmentation runs batched on the device (see :mod:`duvflow.ssl.augment`). The
order of the training batches is :class:`duvflow.train.batches.StepBatches`."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_uint8_tensor", "collate_patches", "to_device_float"]


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
