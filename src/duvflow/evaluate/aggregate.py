"""Slide-level aggregation of patch probabilities and the slide threshold theta.

A slide's score is the mean malignancy probability of its patches; the slide is called malignant
when ``score > theta`` (strictly: a score equal to theta is benign). theta is either fixed (the
published 0.2, which suits DUV slides with sparse malignant foci) or ``auto``: chosen per fold on
that fold's *validation* slides only, as the grid value with the highest balanced accuracy; ties
go to the value nearest the fixed theta. Test slides never influence the choice.

Both thetas are always computed and written, so the evaluation can report the fixed and the
automatic rule side by side: with ``theta: auto`` the fixed rule is the published theta
(``PUBLISHED_THETA``), which also breaks ties of the automatic choice; with a number, that number. Nothing here imports torch or scikit-learn: a theta change reruns
only this cheap stage and what follows it, and one job aggregates all folds of an arm
(:func:`aggregate_folds`), so the rerun costs one process start-up per arm, not per fold.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from duvflow.core.config import from_dict
from duvflow.core.io import write_csv, write_json
from duvflow.core.labels import LABELS, label_to_int
from duvflow.core.splits import read_splits

__all__ = [
    "PUBLISHED_THETA",
    "AggregateConfig",
    "aggregate_folds",
    "aggregate_slides",
    "binary_metrics",
    "choose_theta",
    "confusion_counts",
    "slide_scores",
]

_log = logging.getLogger(__name__)

# The paper's fixed slide threshold: the fixed rule reported beside ``theta: auto`` (one config key,
# ``aggregate.theta``, sets the number otherwise).
PUBLISHED_THETA = 0.2


@dataclasses.dataclass(frozen=True)
class AggregateConfig:
    """The ``aggregate`` config section."""

    theta: float | str = PUBLISHED_THETA
    theta_grid: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)

    def __post_init__(self):
        if isinstance(self.theta, str) and self.theta != "auto":
            raise ValueError(f"aggregate.theta must be a number in [0, 1] or 'auto', got {self.theta!r}")
        if not isinstance(self.theta, str) and not 0 <= float(self.theta) <= 1:
            raise ValueError(f"aggregate.theta must lie in [0, 1], got {self.theta}")
        if not self.theta_grid:
            raise ValueError("aggregate.theta_grid must list at least one threshold")

    @property
    def mode(self) -> str:
        return "auto" if self.theta == "auto" else "fixed"

    @property
    def fixed_theta(self) -> float:
        """The fixed rule's theta: the configured number, or ``PUBLISHED_THETA`` when theta is auto."""
        return PUBLISHED_THETA if self.theta == "auto" else float(self.theta)


def slide_scores(patches: pd.DataFrame) -> pd.DataFrame:
    """Mean patch probability per slide: ``slide_id, score, n_patches`` (one row per slide)."""
    if patches["prob"].isna().any():
        raise ValueError("patch probabilities contain NaN")
    grouped = patches.groupby("slide_id", sort=True)["prob"]
    return pd.DataFrame({"score": grouped.mean(), "n_patches": grouped.size()}).reset_index()


def confusion_counts(y_true, y_pred) -> dict[str, int]:
    """``tp, fn, tn, fp`` with malignant (1) as the positive class.

    Counted with NumPy rather than scikit-learn: aggregation jobs rerun on every theta change and
    importing scikit-learn would dominate their run time.
    """
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length ({y.shape} vs {p.shape})")
    return {"tp": int((y & p).sum()), "fn": int((y & ~p).sum()), "tn": int((~y & ~p).sum()),
            "fp": int((~y & p).sum())}


def binary_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy, sensitivity, specificity and balanced accuracy from the confusion counts.

    A metric whose denominator is empty is NaN (e.g. sensitivity of a fold without malignant
    slides); balanced accuracy then is the mean of the defined class recalls.
    """
    c = confusion_counts(y_true, y_pred)
    n = sum(c.values())
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    sens = c["tp"] / pos if pos else float("nan")
    spec = c["tn"] / neg if neg else float("nan")
    recalls = [r for r in (sens, spec) if not np.isnan(r)]
    return {
        "accuracy": (c["tp"] + c["tn"]) / n if n else float("nan"),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
    }


def choose_theta(scores, labels, grid: Sequence[float], anchor: float) -> float:
    """The grid theta maximising balanced accuracy of ``score > theta``; ties -> nearest ``anchor``
    (then the smaller). Without scores (no validation slides) the anchor itself."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    candidates = sorted({float(t) for t in grid})
    if len(scores) == 0:
        return float(anchor)
    bacc = np.array([binary_metrics(labels, scores > t)["balanced_accuracy"] for t in candidates])
    best = np.flatnonzero(np.isclose(bacc, np.nanmax(bacc), rtol=0, atol=1e-12))
    ranked = sorted(best, key=lambda i: (abs(candidates[i] - anchor), candidates[i]))
    return candidates[ranked[0]]


def aggregate_slides(*, patches: str | os.PathLike, splits: str | os.PathLike, fold: str,
                     output: str | os.PathLike, theta_output: str | os.PathLike, aggregate: dict) -> pd.DataFrame:
    """Slide scores, the fold's thetas and slide predictions for one fold's val and test slides.

    Writes ``output`` (CSV: ``slide_id, fold, role, label, score, n_patches, theta, prediction,
    theta_fixed, theta_auto``; ``theta``/``prediction`` follow the configured mode) and
    ``theta_output`` (JSON with both thetas and what they were chosen on).
    """
    cfg = from_dict(AggregateConfig, aggregate, "aggregate")
    probs = pd.read_parquet(patches)
    split = read_splits(splits)
    split = split[split["fold"] == str(fold)]
    if split.empty:
        raise ValueError(f"fold {fold!r} does not exist in {splits}")
    slides = slide_scores(probs).merge(split[["slide_id", "label", "role"]], on="slide_id", how="left",
                                       validate="one_to_one")
    if slides["role"].isna().any():
        raise ValueError(f"{patches}: slides not in fold {fold} of {splits}: "
                         f"{', '.join(slides.loc[slides['role'].isna(), 'slide_id'][:10])}")
    if slides["role"].eq("train").any():
        raise ValueError(f"{patches}: predictions for training slides of fold {fold}; only val/test slides are scored")
    expected = split.loc[split["role"].isin(["val", "test"]), "slide_id"]
    unscored = sorted(set(expected) - set(slides["slide_id"]))
    if unscored:
        _log.warning("fold %s: %d val/test slide(s) without patch predictions are left out: %s", fold,
                     len(unscored), ", ".join(unscored[:10]))

    val = slides[slides["role"] == "val"]
    y_val = label_to_int(val["label"]) if len(val) else np.zeros(0, int)
    theta_auto = choose_theta(val["score"], y_val, cfg.theta_grid, cfg.fixed_theta)
    if len(val) == 0:
        _log.warning("fold %s has no scored validation slides: theta auto falls back to %.3g", fold, theta_auto)
    elif len(set(y_val)) < 2:
        _log.warning("fold %s: validation slides are all %s; theta auto (%.3g) rests on one class only",
                     fold, LABELS[y_val[0]], theta_auto)
    theta = theta_auto if cfg.mode == "auto" else cfg.fixed_theta

    slides["fold"] = str(fold)
    slides["theta"] = theta
    slides["prediction"] = np.where(slides["score"] > theta, LABELS[1], LABELS[0])
    slides["theta_fixed"] = cfg.fixed_theta
    slides["theta_auto"] = theta_auto
    slides = slides[["slide_id", "fold", "role", "label", "score", "n_patches", "theta", "prediction",
                     "theta_fixed", "theta_auto"]].sort_values(["role", "slide_id"], ignore_index=True)
    write_csv(slides, output)
    write_json({"fold": str(fold), "mode": cfg.mode, "theta": theta, "theta_fixed": cfg.fixed_theta,
                "theta_auto": theta_auto, "theta_grid": list(cfg.theta_grid), "n_val_slides": len(val),
                "val_labels": {lab: int((y_val == i).sum()) for i, lab in enumerate(LABELS)}}, theta_output)
    _log.info("fold %s: %d slides scored (%d val); theta %s = %.3g (fixed %.3g, auto %.3g)", fold, len(slides),
              len(val), cfg.mode, theta, cfg.fixed_theta, theta_auto)
    return slides


def aggregate_folds(*, patches: Sequence[str | os.PathLike], splits: str | os.PathLike, folds: Sequence[str],
                    outputs: Sequence[str | os.PathLike], theta_outputs: Sequence[str | os.PathLike],
                    aggregate: dict) -> pd.DataFrame:
    """:func:`aggregate_slides` for several folds of one arm in one process; the lists run in
    parallel (``patches[i]`` is fold ``folds[i]``'s, written to ``outputs[i]`` and ``theta_outputs[i]``)."""
    if not len(patches) == len(folds) == len(outputs) == len(theta_outputs):
        raise ValueError(f"aggregate_folds: {len(folds)} folds but {len(patches)} patch tables, {len(outputs)} "
                         f"slide tables and {len(theta_outputs)} theta files; give one of each per fold")
    _log.info("aggregating %d fold(s): %s", len(folds), ", ".join(map(str, folds)))
    tables = [aggregate_slides(patches=p, splits=splits, fold=f, output=o, theta_output=t, aggregate=aggregate)
              for p, f, o, t in zip(patches, folds, outputs, theta_outputs, strict=True)]
    return pd.concat(tables, ignore_index=True)
