"""Small helpers shared by the VAE and LDM stages: image conversions, grids, the version stamp."""

from __future__ import annotations

import os

import numpy as np

from duvflow.core.io import atomic_path

__all__ = ["run_metadata", "save_grid", "to_uint8"]


def to_uint8(images) -> np.ndarray:
    """Decoder output in [-1, 1], (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu")
    return images.byte().permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, target: str | os.PathLike, ncol: int | None = None) -> None:
    """Tile uint8 (B, H, W, 3) images into one PNG (atomic)."""
    from PIL import Image

    b, h, w, _ = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(b)))
    nrow = int(np.ceil(b / ncol))
    grid = np.zeros((nrow * h, ncol * w, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    with atomic_path(target) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def run_metadata(**extra) -> dict:
    """Version stamp written next to every model the stage produces."""
    import diffusers
    import torch

    from duvflow.core.provenance import code_version

    return {"duvflow_version": code_version(), "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__, **extra}
