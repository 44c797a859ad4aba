"""Inputs of the diffusion stage: a fold's training patches, the embedding table, the latent store.

The latent store (``latents/fold_{fold}.h5``) holds every training patch of a fold encoded once
by the fold's frozen VAE, already multiplied by the VAE's scaling factor, so the LDM trains on
cached latents instead of re-encoding pixels every step:

    /mean, /std        float16 (N, C, h, w)   posterior mean and standard deviation
    /slide_id          str (N,)               source slide
    /patch_index       int64 (N,)             row in the slide's tile table / store
    /label_int         int64 (N,)             0 benign, 1 malignant
    attrs              fold, image_size, scaling_factor, latent_channels, latent_size, vae
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.patches import attach_split, load_patch_index

__all__ = ["fold_training_patches", "read_latent_store", "write_latent_store"]

_log = logging.getLogger(__name__)


def fold_training_patches(tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                          splits: str | os.PathLike, fold: str) -> pd.DataFrame:
    """Patch index (``duvflow.core.patches``) of the training slides of ``fold`` (role ``train``)."""
    index = attach_split(load_patch_index(tables, stores, statuses), splits, fold)
    train = index[index["role"] == "train"].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"fold {fold} has no training patches (splits: {splits})")
    _log.info("fold %s: %d training patches from %d slides", fold, len(train), train["slide_id"].nunique())
    return train


def write_latent_store(path: str | os.PathLike, mean: np.ndarray, std: np.ndarray, index: pd.DataFrame,
                       attrs: dict) -> None:
    """Write the latent store (call inside ``duvflow.core.io.atomic_path``)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("mean", data=mean.astype(np.float16))
        f.create_dataset("std", data=std.astype(np.float16))
        f.create_dataset("slide_id", data=index["slide_id"].astype(str).to_numpy(dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("patch_index", data=index["patch_index"].to_numpy(np.int64))
        f.create_dataset("label_int", data=index["label_int"].to_numpy(np.int64))
        f.attrs.update({k: v for k, v in attrs.items() if v is not None})


def read_latent_store(path: str | os.PathLike, arrays: bool = True) -> dict:
    """The whole store in memory: ``mean``/``std`` float32 tensors (unless ``arrays=False``), the
    ``index`` DataFrame (slide_id, patch_index, label_int) and ``attrs``."""
    import h5py
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent store {path} does not exist")
    with h5py.File(path, "r") as f:
        for key in ("mean", "std", "slide_id", "patch_index", "label_int"):
            if key not in f:
                raise ValueError(f"latent store {path} lacks dataset /{key}")
        out = {
            "index": pd.DataFrame({
                "slide_id": f["slide_id"].asstr()[:],
                "patch_index": f["patch_index"][:],
                "label_int": f["label_int"][:],
            }),
            "attrs": dict(f.attrs),
        }
        if arrays:
            out["mean"] = torch.from_numpy(f["mean"][:].astype(np.float32))
            out["std"] = torch.from_numpy(f["std"][:].astype(np.float32))
    return out
