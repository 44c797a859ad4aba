"""Patch malignancy probabilities of a fold's validation and test slides (``predict_tiles``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pandas as pd

from duvflow.classifier.config import ClassifierConfig
from duvflow.classifier.data import LeakageError, PatchImages
from duvflow.classifier.model import load_classifier, predict_probs
from duvflow.core.config import from_dict
from duvflow.core.io import write_parquet
from duvflow.core.patches import attach_split, load_patch_index
from duvflow.core.runtime import configure_threads, select_device

__all__ = ["predict_tiles"]

_log = logging.getLogger(__name__)


def predict_tiles(*, model_dir: str | os.PathLike, tables: Sequence[str], stores: Sequence[str],
                  statuses: Sequence[str], splits: str | os.PathLike, fold: str, output: str | os.PathLike,
                  classifier: dict, threads: int | None = None) -> pd.DataFrame:
    """Write ``slide_id, patch_index, x, y, role, prob`` for every patch of the fold's val and test
    slides (validation predictions let aggregation choose theta without touching test slides)."""
    cfg = from_dict(ClassifierConfig, classifier, "classifier")
    configure_threads(threads)
    device = select_device(cfg.device)
    model, meta = load_classifier(model_dir, device)
    if str(meta.get("fold")) != str(fold):
        raise ValueError(f"{model_dir} was trained for fold {meta.get('fold')}, not fold {fold}")
    index = attach_split(load_patch_index(tables, stores, statuses), splits, fold)
    index = index[index["role"].isin(["val", "test"])].reset_index(drop=True)
    leaked = sorted(set(index.loc[index["role"] == "test", "slide_id"]) & set(meta.get("train_slides", [])))
    if leaked:
        raise LeakageError(f"{model_dir} was trained on test slide(s) {', '.join(leaked)} of fold {fold}")
    images = PatchImages(index, None, meta["img_size"])
    probs = predict_probs(model, images, batch_size=cfg.eval_batch_size, device=device,
                          mixed_precision=cfg.mixed_precision,
                          num_workers=cfg.num_workers, desc=f"predict fold {fold}")
    table = index[["slide_id", "patch_index", "x", "y", "role"]].assign(prob=probs)
    write_parquet(table, output, metadata={"model": str(model_dir), "fold": str(fold), "arm": str(meta.get("arm"))})
    _log.info("fold %s: predicted %d patches of %d slides (%d test)", fold, len(table), table["slide_id"].nunique(),
              table.loc[table["role"] == "test", "slide_id"].nunique())
    return table
