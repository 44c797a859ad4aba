"""Small helpers shared by the VAE and LDM loops: the live loss CSV, image conversions, grids."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

__all__ = ["MetricsLog", "run_metadata", "save_grid", "to_uint8"]


class MetricsLog:
    """Loss rows appended to ``<checkpoint folder>/metrics.csv`` while training runs.

    On resume the rows logged after the resumed checkpoint are dropped, so the final CSV has each
    step once; the finished run copies the file into its output folder.
    """

    def __init__(self, path: str | os.PathLike, fields: list[str], resume_step: int = 0):
        self.path = Path(path)
        self.fields = fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, **row) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(row)

    def read(self):
        import pandas as pd

        return pd.read_csv(self.path)


def to_uint8(images) -> np.ndarray:
    """Decoder output in [-1, 1], (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu")
    return images.byte().permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, target: str | os.PathLike, ncol: int | None = None) -> None:
    """Tile uint8 (B, H, W, 3) images into one PNG (atomic)."""
    from PIL import Image

    from duvflow.core.io import atomic_path

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
