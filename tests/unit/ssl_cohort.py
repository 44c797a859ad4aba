"""A tiny patch cohort written directly as tiling outputs (tile table + packed store + status JSON),
for the SSL tests: benign patches are smooth, malignant ones densely dotted, each slide tinted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.slides.store import PatchStoreWriter


def _patch(rng: np.random.Generator, label: str, size: int, tint: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.35 + 0.15 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + yy * rng.uniform(0.5, 1.5)))
    img = np.repeat(base[..., None], 3, axis=2) * tint
    if label == "malignant":  # many bright small "nuclei"
        n = int(size * size / 12)
        ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
        img[ys, xs] = 0.95
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_cohort(root, labels: dict[str, str], n_patches: int = 12, size: int = 32, seed: int = 0,
                statuses: dict[str, str] | None = None, sizes: dict[str, int] | None = None):
    """Write tiles/{slide}.parquet/.h5/.json under ``root``; returns (tables, stores, statuses) lists."""
    root = Path(root)
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tables, stores, jsons = [], [], []
    for sid, label in labels.items():
        status = (statuses or {}).get(sid, "ok")
        s = (sizes or {}).get(sid, size)
        n = n_patches if status == "ok" else 0
        tint = rng.uniform(0.7, 1.0, 3)
        xy = [(s * (i % 8), s * (i // 8)) for i in range(n)]
        table = pd.DataFrame({"slide_id": sid, "patch_index": np.arange(n), "x": [a for a, _ in xy],
                              "y": [b for _, b in xy], "level": 0, "size": s, "size_level0": s,
                              "tissue_fraction": 1.0, "label": label})
        paths = [root / "tiles" / f"{sid}.{ext}" for ext in ("parquet", "h5", "json")]
        table.to_parquet(paths[0], index=False)
        with PatchStoreWriter(paths[1], n, s, attrs={"slide_id": sid}) as w:
            for i in range(n):
                w.write(i, _patch(rng, label, s, tint), xy[i])
        paths[2].write_text(json.dumps({"slide_id": sid, "status": status, "reason": "", "n_patches": n}))
        tables.append(str(paths[0]))
        stores.append(str(paths[1]))
        jsons.append(str(paths[2]))
    return tables, stores, jsons


def labels_for(n_benign: int, n_malignant: int) -> dict[str, str]:
    out = {f"B{i:02d}": "benign" for i in range(n_benign)}
    out.update({f"M{i:02d}": "malignant" for i in range(n_malignant)})
    return out


def tiny_dino(**overrides) -> dict:
    """A DINO config that trains in about a second on a CPU."""
    cfg = {
        "backbone": "vit_tiny_patch16_224",
        "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "img_size": 32, "drop_path_rate": 0.0,
        "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "n_layers": 3},
        "crops": {"n_local": 2, "local_size": 16},
        "augment": {"blur_sigma": [0.1, 1.0]},
        "epochs": 3, "batch_size": 8, "lr": 0.005, "warmup_epochs": 1, "freeze_last_layer_epochs": 1,
        "checkpoint_every": 3, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04,
    }
    cfg.update(overrides)
    return cfg
