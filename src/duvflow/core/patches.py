"""Patches of a cohort as one table and a torch Dataset over the packed stores.

Every training and inference stage (DINO, embedding, VAE/LDM latents, classifier) reads patches
through here: the per-slide tile tables are concatenated into one index (one row per patch),
slides whose tiling status is not ``ok`` are left out, and a :class:`PatchDataset` reads pixels
from the slides' HDF5 stores on demand (each DataLoader worker opens its own handles).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.io import read_json
from duvflow.core.splits import check_patient_roles
from duvflow.slides.store import PatchStore

__all__ = ["LABEL_TO_INT", "PatchDataset", "attach_split", "load_patch_index", "resize_batch", "to_float_tensor"]

_log = logging.getLogger(__name__)
LABEL_TO_INT = {"benign": 0, "malignant": 1}


def load_patch_index(tables: Sequence[str | os.PathLike], stores: Sequence[str | os.PathLike],
                     statuses: Sequence[str | os.PathLike] | None = None) -> pd.DataFrame:
    """One row per patch of every usable slide: the tile tables' columns plus ``store`` (HDF5 path)
    and ``label_int``. ``tables``, ``stores`` and ``statuses`` are parallel lists (one per slide)."""
    if len(tables) != len(stores) or (statuses is not None and len(statuses) != len(tables)):
        raise ValueError("tables, stores and statuses must list the same slides in the same order")
    frames = []
    for i, (table, store) in enumerate(zip(tables, stores, strict=True)):
        if statuses is not None:
            status = read_json(statuses[i])
            if status.get("status") != "ok":
                _log.info("leaving out slide %s: tiling status %s (%s)", status.get("slide_id"),
                          status.get("status"), status.get("reason", ""))
                continue
        df = pd.read_parquet(table)
        if df.empty:
            continue
        df["store"] = str(Path(store))
        frames.append(df)
    if not frames:
        raise ValueError("no usable patches: every slide was skipped or had no tissue (see the QC table)")
    index = pd.concat(frames, ignore_index=True)
    index["label_int"] = index["label"].map(LABEL_TO_INT).astype("int64")
    return index


def attach_split(index: pd.DataFrame, splits: str | os.PathLike | pd.DataFrame, fold: str) -> pd.DataFrame:
    """Add each patch's ``role`` (train/val/test) in ``fold`` from ``splits.csv``."""
    splits = pd.read_csv(splits, dtype=str) if not isinstance(splits, pd.DataFrame) else splits
    check_patient_roles(splits)  # every stage refuses a table where a test patient's other slide trains
    roles = splits.loc[splits["fold"].astype(str) == str(fold), ["slide_id", "role"]]
    if roles.empty:
        raise ValueError(f"fold {fold!r} does not exist in the splits table")
    out = index.drop(columns=["role"], errors="ignore").merge(roles, on="slide_id", how="left", validate="many_to_one")
    missing = out.loc[out["role"].isna(), "slide_id"].unique()
    if len(missing):
        raise ValueError(f"slides without a role in fold {fold}: {', '.join(missing[:10])}")
    return out


def to_float_tensor(patches: np.ndarray):
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(patches))
    return t.movedim(-1, -3).float().div_(255.0)


def resize_batch(images, size: int):
    """Antialiased bilinear resize of float (B, 3, H, W) images to ``size`` x ``size``."""
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class PatchDataset:
    """``dataset[i]`` -> (transform(uint8 HWC patch), label_int, i) for row ``i`` of ``index``.

    ``transform`` defaults to a float CHW tensor in [0, 1] resized to ``size`` (when given).
    Stores are opened lazily per worker process.
    """

    def __init__(self, index: pd.DataFrame, transform: Callable | None = None, size: int | None = None):
        self.index = index.reset_index(drop=True)
        self._stores: dict[str, PatchStore] = {}
        self._paths = self.index["store"].to_numpy()
        self._rows = self.index["patch_index"].to_numpy()
        self._labels = self.index["label_int"].to_numpy() if "label_int" in self.index else np.zeros(len(self.index), int)
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int) -> np.ndarray:
        path = self._paths[i]
        store = self._stores.get(path)
        if store is None:
            store = self._stores[path] = PatchStore(path)
        return store[int(self._rows[i])]

    def __getitem__(self, i: int):
        patch = self.read(i)
        if self.transform is not None:
            image = self.transform(patch)
        else:
            image = to_float_tensor(patch)
            if self.size is not None:
                image = resize_batch(image[None], self.size)[0]
        return image, int(self._labels[i]), i
