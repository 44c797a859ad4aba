"""Patch embeddings: the fold's DINO teacher (or the initial backbone, as the probe's baseline)
applied to every patch of every usable slide.

Test slides are embedded too, by the fold's own teacher, which never trained on them. Output: one
parquet per fold with ``slide_id, patch_index, x, y, label, role, embedding`` where ``embedding``
is a fixed-size list<float32>; :func:`read_embeddings` returns it as a NumPy matrix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from duvflow.core.config import from_dict
from duvflow.core.io import write_parquet
from duvflow.core.patches import PatchDataset, attach_split, load_patch_index, resize_batch
from duvflow.core.provenance import code_version
from duvflow.core.runtime import autocast, configure_threads, progress, select_device
from duvflow.ssl.batches import as_uint8_tensor, collate_patches, to_device_float
from duvflow.ssl.model import Embedder, build_backbone, data_stats, load_teacher
from duvflow.ssl.tables import read_embeddings  # in __all__: the reader lives apart, free of torch

__all__ = [
    "EmbedConfig",
    "compute_embeddings",
    "embed_initial",
    "embed_patches",
    "embedding_table",
    "read_embeddings",
]

_log = logging.getLogger(__name__)
META_COLUMNS = ["slide_id", "patch_index", "x", "y", "label"]


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 256
    device: str = "auto"
    bf16: bool = True


def prepare_batch(batch: torch.Tensor, sizes: torch.Tensor, img_size: int, device) -> torch.Tensor:
    """uint8 patches -> float [0, 1] at the model's input size, resized on ``device`` with the
    project's antialiased bilinear :func:`duvflow.core.patches.resize_batch`; padded patches of another size
    (slides tiled at other pixel sizes) are resized from their valid extent, group by group, so a
    patch's embedding never depends on the batch it landed in."""
    images = to_device_float(batch, device)
    uniform = bool((sizes == sizes[0]).all())
    if uniform and images.shape[-2] == int(sizes[0, 0]) and images.shape[-1] == int(sizes[0, 1]):
        return resize_batch(images, img_size)
    out = torch.empty((images.shape[0], 3, img_size, img_size), device=device, dtype=images.dtype)
    for h, w in torch.unique(sizes, dim=0).tolist():
        sel = ((sizes[:, 0] == h) & (sizes[:, 1] == w)).nonzero().squeeze(1).to(device)
        out[sel] = resize_batch(images[sel, :, :h, :w], img_size)
    return out


class _EmbedCollate:
    """Collation that, with ``img_size``, also converts and resizes (in the DataLoader workers, so
    it overlaps with the model on CPU-only machines)."""

    def __init__(self, img_size: int | None):
        self.img_size = img_size

    def __call__(self, items):
        batch, sizes, _, _ = collate_patches(items)
        if self.img_size is None:
            return batch, sizes, None
        return None, sizes, prepare_batch(batch, sizes, self.img_size, torch.device("cpu"))


def compute_embeddings(model: Embedder, index: pd.DataFrame, *, batch_size: int, device, bf16: bool = True,
                       num_workers: int = 0, desc: str = "embedding") -> np.ndarray:
    """float32 (len(index), dim) embeddings of ``index``'s patches, in row order.

    Patches are resized on the device on a GPU, in the loader workers on the CPU (when there are any).
    """
    model = model.to(device).eval()
    in_workers = num_workers > 0 and device.type != "cuda"
    loader = torch.utils.data.DataLoader(
        PatchDataset(index, transform=as_uint8_tensor), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_EmbedCollate(model.img_size if in_workers else None),
        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
    )
    out = torch.empty((len(index), model.dim), dtype=torch.float32)
    pos = 0
    with torch.inference_mode(), progress(total=len(index), desc=desc, unit="patch") as bar:
        for batch, sizes, images in loader:
            x = prepare_batch(batch, sizes, model.img_size, device) if images is None else images.to(device)
            with autocast(device, enabled=bf16):
                z = model(x)
            out[pos: pos + len(z)] = z.float().cpu()
            pos += len(z)
            bar.update(len(z))
    return out.numpy()


def embedding_table(index: pd.DataFrame, embeddings: np.ndarray):
    """A pyarrow table of ``index``'s metadata columns plus the fixed-size list<float32> ``embedding``."""
    import pyarrow as pa

    cols = META_COLUMNS + (["role"] if "role" in index else [])
    table = pa.Table.from_pandas(index[cols].reset_index(drop=True), preserve_index=False)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), emb.shape[1])
    return table.append_column("embedding", column)


def _workers(threads: int, num_workers: int | None, device=None) -> int:
    """DataLoader workers from the job's threads; on the CPU the compute threads shrink to match
    (loader workers + torch threads must not oversubscribe the cores)."""
    workers = max(0, min(threads - 1, 8)) if num_workers is None else num_workers
    if device is not None and device.type == "cpu" and workers:
        torch.set_num_threads(max(1, threads - workers))
    return workers


def _ordered(index: pd.DataFrame) -> pd.DataFrame:
    return index.sort_values(["slide_id", "patch_index"]).reset_index(drop=True)


def embed_patches(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None, splits: str,
                  fold: str, teacher: str | os.PathLike, teacher_config: str | os.PathLike,
                  output: str | os.PathLike, embed: dict, threads: int = 1, num_workers: int | None = None) -> None:
    """Embed every patch of every usable slide with fold ``fold``'s teacher; roles from ``splits``."""
    cfg = from_dict(EmbedConfig, embed, "embed")
    configure_threads(threads)
    device = select_device(cfg.device)
    index = _ordered(attach_split(load_patch_index(tables, stores, statuses), splits, fold))
    model, meta = load_teacher(teacher, teacher_config)
    if str(meta.get("fold")) != str(fold):
        raise ValueError(f"{teacher_config} is the teacher of fold {meta.get('fold')}, not of fold {fold}")
    _log.info("embedding %d patches of %d slides with the fold %s teacher (%s, %s pooling, %d px) on %s",
              len(index), index["slide_id"].nunique(), fold, meta["backbone"], meta["pooling"], meta["img_size"],
              device)
    emb = compute_embeddings(model, index, batch_size=cfg.batch_size, device=device, bf16=cfg.bf16,
                             num_workers=_workers(threads, num_workers, device), desc=f"embed fold {fold}")
    _check_spread(emb, f"fold {fold}")
    write_parquet(embedding_table(index, emb), output, metadata={
        "fold": str(fold), "teacher": str(teacher), "backbone": meta["backbone"], "pooling": meta["pooling"],
        "img_size": str(meta["img_size"]), "embed_dim": str(emb.shape[1]), "duvflow_version": code_version()})
    _log.info("wrote %s (%d x %d)", output, *emb.shape)


def embed_initial(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                  output: str | os.PathLike, dino: dict, embed: dict, seed: int, threads: int = 1,
                  num_workers: int | None = None) -> None:
    """Embed every patch with the backbone DINO starts from (the probe's "before fine-tuning")."""
    from duvflow.ssl.train import DinoConfig

    dcfg = from_dict(DinoConfig, dino, "dino")
    cfg = from_dict(EmbedConfig, embed, "embed")
    configure_threads(threads)
    device = select_device(cfg.device)
    index = _ordered(load_patch_index(tables, stores, statuses))
    backbone = build_backbone(dcfg.backbone, model_kwargs=dcfg.model_kwargs, pooling=dcfg.pooling,
                              img_size=dcfg.img_size, weights=dcfg.weights, hub=dcfg.hub, seed=seed)
    model = Embedder(backbone, *data_stats(backbone), dcfg.img_size)
    _log.info("embedding %d patches with the initial %s backbone (%s)", len(index), dcfg.backbone,
              dcfg.weights or ("hub weights" if dcfg.hub else "random initialisation"))
    emb = compute_embeddings(model, index, batch_size=cfg.batch_size, device=device, bf16=cfg.bf16,
                             num_workers=_workers(threads, num_workers, device), desc="embed initial")
    write_parquet(embedding_table(index, emb), output, metadata={
        "fold": "initial", "backbone": dcfg.backbone, "pooling": dcfg.pooling, "img_size": str(dcfg.img_size),
        "embed_dim": str(emb.shape[1]), "weights": str(dcfg.weights), "duvflow_version": code_version()})
    _log.info("wrote %s (%d x %d)", output, *emb.shape)


def _check_spread(emb: np.ndarray, what: str, min_std: float = 0.05) -> None:
    """Warn when the embeddings of all patches are (nearly) one vector: a collapsed teacher."""
    if len(emb) < 2:
        return
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    spread = float(z.std(axis=0).mean() * np.sqrt(z.shape[1]))
    if spread < min_std:
        _log.warning("EMBEDDINGS COLLAPSED (%s): normalised std %.4f over %d patches; downstream conditioning "
                     "on them will carry no information", what, spread, len(emb))
    else:
        _log.info("embedding spread (%s): normalised std %.3f", what, spread)
