"""The baseline arms' patch classifier: a logistic regression per fold (rule ``fit_baseline``).

``probe`` fits it on the fold's DINO-teacher embeddings, ``handcrafted`` on the per-patch colour and
texture features; both on the fold's training-slide patches only, then predict the patches of its
validation and test slides. The output has the columns of ``predict_tiles`` (``slide_id,
patch_index, x, y, role, prob``), so slide aggregation, theta and evaluation are those of every arm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from duvflow.baselines.config import BASELINE_ARMS, BaselineConfig
from duvflow.core.config import from_dict
from duvflow.core.io import write_json, write_parquet
from duvflow.core.labels import label_to_int
from duvflow.core.patches import attach_split

__all__ = ["baseline_inputs", "fit_baseline", "fit_predict"]

_log = logging.getLogger(__name__)
_KEY = ["slide_id", "patch_index", "x", "y", "label"]


def baseline_inputs(arm: str, *, embeddings: str | os.PathLike | None = None,
                    features: Sequence[str | os.PathLike] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(patch metadata, feature matrix) of the arm: DINO embeddings (``probe``) or handcrafted features."""
    if arm == "probe":
        if not embeddings:
            raise ValueError("the probe baseline needs the fold's embeddings table")
        from duvflow.ssl.embed import read_embeddings

        meta, x = read_embeddings(embeddings, columns=_KEY)
        return meta, x
    if arm == "handcrafted":
        if not features:
            raise ValueError("the handcrafted baseline needs the slides' feature tables")
        table = pd.concat([pd.read_parquet(f) for f in features], ignore_index=True)
        values = table.drop(columns=_KEY)
        return table[_KEY], values.to_numpy(np.float32)
    raise ValueError(f"unknown baseline arm {arm!r} (known: {', '.join(BASELINE_ARMS)})")


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, cfg: BaselineConfig,
                seed: int) -> tuple[np.ndarray, dict]:
    """Standardise -> logistic regression on the training patches; malignancy probability of ``x_eval``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        raise ValueError("the fold's training patches carry one label only; a baseline needs both classes")
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=cfg.logreg_c, class_weight="balanced" if cfg.balance else None, max_iter=5000, random_state=seed))
    model.fit(x_train, y_train)
    train_prob = model.predict_proba(x_train)[:, 1]
    info = {"n_train": len(y_train), "n_features": int(x_train.shape[1]),
            "train_accuracy": float(np.mean((train_prob > 0.5) == y_train)),
            "n_iter": int(np.max(model[-1].n_iter_))}
    prob = model.predict_proba(x_eval)[:, 1] if len(x_eval) else np.zeros(0)
    return prob.astype(np.float32), info


def fit_baseline(*, arm: str, fold: str, splits: str | os.PathLike, output: str | os.PathLike,
                 info_output: str | os.PathLike, baselines: dict, seed: int, embeddings: str | None = None,
                 features: Sequence[str] | None = None) -> pd.DataFrame:
    """Fit the ``arm`` baseline on ``fold``'s training patches; write its val/test patch probabilities."""
    cfg = from_dict(BaselineConfig, baselines, "baselines")
    meta, x = baseline_inputs(arm, embeddings=embeddings, features=features)
    meta = attach_split(meta.reset_index(drop=True), splits, fold)
    role = meta["role"].to_numpy()
    train = np.flatnonzero(role == "train")
    if len(train) > cfg.max_train_patches:  # a fixed random subset bounds the fit on large cohorts
        train = np.sort(np.random.default_rng(seed).choice(train, cfg.max_train_patches, replace=False))
    evaluate = np.flatnonzero(np.isin(role, ["val", "test"]))
    leaked = set(meta["slide_id"].iloc[train]) & set(meta.loc[role == "test", "slide_id"])
    if leaked:  # attach_split gives each slide one role; this guards the contract all the same
        raise ValueError(f"fold {fold}: test slide(s) {sorted(leaked)} among the training patches")
    prob, info = fit_predict(x[train], label_to_int(meta["label"].iloc[train]), x[evaluate], cfg, seed)
    table = meta.iloc[evaluate][["slide_id", "patch_index", "x", "y", "role"]].reset_index(drop=True).assign(prob=prob)
    write_parquet(table, output, metadata={"model": f"{arm} baseline (logistic regression)", "fold": str(fold),
                                           "arm": arm})
    write_json({"arm": arm, "fold": str(fold), **info, "n_train_slides": int(meta["slide_id"].iloc[train].nunique()),
                "n_eval": len(evaluate), "logreg_c": cfg.logreg_c, "balance": cfg.balance}, info_output)
    _log.info("%s baseline fold %s: fitted on %d patches x %d features (train accuracy %.3f); predicted %d "
              "val/test patches", arm, fold, info["n_train"], info["n_features"], info["train_accuracy"],
              len(table))
    return table
