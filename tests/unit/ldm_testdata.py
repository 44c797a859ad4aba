"""Tiny inputs for the LDM/FID tests, written in the documented file formats.

A 4-slide cohort (tile tables, packed stores, status JSONs), ``splits.csv`` with folds ``0`` and
``all``, a random embedding table per fold and a tiny DINO teacher (timm ViT) as train_dino
writes it. Patches carry a label-dependent colour and stripe pattern so models have something
to learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.slides.store import PatchStoreWriter

SLIDES = {"s0": "benign", "s1": "malignant", "s2": "benign", "s3": "malignant", "s4": "benign"}
# fold 0: s0, s1, s4 train; s2 val; s3 test.  fold all: s0..s3 train, s4 val.
ROLES = {
    "0": {"s0": "train", "s1": "train", "s4": "train", "s2": "val", "s3": "test"},
    "all": {"s0": "train", "s1": "train", "s2": "train", "s3": "train", "s4": "val"},
}
EMBED_DIM = 16


def make_patch(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if label == "benign":
        base = np.array([230, 150, 190]) * (0.75 + 0.25 * np.sin(xx / 3.0 + rng.uniform(0, 6)))[..., None]
    else:
        base = np.array([120, 60, 170]) * (0.75 + 0.25 * np.sin((xx + yy) / 2.0 + rng.uniform(0, 6)))[..., None]
    img = base + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cohort(root: Path, patches_per_slide: int = 8, size: int = 40, seed: int = 0) -> dict:
    """Write the cohort under ``root``; returns the path lists rules would pass."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    tables, stores, statuses = [], [], []
    for slide, label in SLIDES.items():
        table, store, status = (root / "tiles" / f"{slide}.{ext}" for ext in ("parquet", "h5", "json"))
        with PatchStoreWriter(store, patches_per_slide, size, attrs={"slide_id": slide}) as w:
            for i in range(patches_per_slide):
                w.write(i, make_patch(label, rng, size), (i * size, 0))
        pd.DataFrame({"slide_id": slide, "patch_index": np.arange(patches_per_slide), "x": np.arange(patches_per_slide) * size,
                      "y": 0, "level": 0, "size": size, "size_level0": size, "tissue_fraction": 1.0,
                      "label": label}).to_parquet(table)
        status.write_text(json.dumps({"slide_id": slide, "status": "ok", "reason": "", "n_patches": patches_per_slide}))
        tables.append(str(table))
        stores.append(str(store))
        statuses.append(str(status))
    rows = [{"slide_id": s, "label": SLIDES[s], "fold": f, "role": r} for f, roles in ROLES.items()
            for s, r in roles.items()]
    splits = root / "splits.csv"
    pd.DataFrame(rows).to_csv(splits, index=False)
    return {"tables": tables, "stores": stores, "statuses": statuses, "splits": str(splits)}


def make_embeddings(root: Path, fold: str, patches_per_slide: int = 8, seed: int = 1) -> str:
    """A random embedding table of every patch in the documented schema (label-dependent mean)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    meta, embs = [], []
    for slide, label in SLIDES.items():
        centre = np.ones(EMBED_DIM) * (1.0 if label == "malignant" else -1.0)
        for i in range(patches_per_slide):
            meta.append({"slide_id": slide, "patch_index": i, "x": i * 40, "y": 0, "label": label,
                         "role": ROLES[fold][slide]})
            embs.append((centre + rng.normal(0, 1, EMBED_DIM)).astype(np.float32))
    table = pa.Table.from_pandas(pd.DataFrame(meta), preserve_index=False)
    flat = pa.array(np.concatenate(embs), pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, EMBED_DIM))
    path = Path(root) / "embeddings" / f"fold_{fold}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def make_teacher(root: Path, img_size: int = 32) -> tuple[str, str]:
    """A tiny random ViT saved as train_dino does (safetensors state dict + teacher.json)."""
    import torch

    from duvflow.core.backbone import create_backbone
    from duvflow.train.checkpoint import save_weights

    torch.manual_seed(0)
    kwargs = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "global_pool": "token",
              "dynamic_img_size": True}
    model = create_backbone("vit_tiny_patch16_224", img_size=img_size, **kwargs)
    folder = Path(root) / "dino" / "fold_0"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "teacher.safetensors"
    save_weights(model.state_dict(), weights)
    meta = {"backbone": "vit_tiny_patch16_224", "img_size": img_size, "model_kwargs": kwargs,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (folder / "teacher.json").write_text(json.dumps(meta))
    return str(weights), str(folder / "teacher.json")


# Micro model settings shared by the tests (the tests/config.yaml values are of the same size).
VAE_CFG = {"image_size": 32, "block_out_channels": [16, 32], "layers_per_block": 1, "latent_channels": 4,
           "norm_num_groups": 8, "mid_block_attention": False, "steps": 6, "batch_size": 4, "warmup_steps": 2,
           "lr": 1e-3, "checkpoint_every": 3, "log_every": 1, "encode_batch_size": 8, "num_workers": 0,
           "scaling_patches": 16}
LDM_CFG = {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
           "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "mid_block_type": None, "layers_per_block": 1,
           "attention_heads": 2, "cross_attention_dim": 32, "norm_num_groups": 8, "steps": 40, "batch_size": 8,
           "lr": 1e-3, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5, "grid_every": 0, "grid_size": 4,
           "grid_steps": 3, "ema_decay": 0.99}
SAMPLING_CFG = {"steps": 4, "guidance": 2.0, "synthetic_fraction": 0.2, "batch_size": 4}
