"""Metrics used by more than one stage (the classifier's model selection and the evaluation).

NumPy instead of scikit-learn: the evaluation jobs rerun on every theta change and importing
scikit-learn would dominate their run time (tests check equality with scikit-learn).
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc", "roc_curve"]


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates and their thresholds (``score >= threshold``), as
    ``sklearn.metrics.roc_curve`` computes them (collinear points dropped, a first point at (0, 0)).

    NumPy instead of scikit-learn: the evaluation jobs rerun on every theta change and importing
    scikit-learn would dominate their run time. A rate whose class is absent is NaN.
    """
    y = np.asarray(labels, dtype=int) == 1
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y, dtype=np.float64)[last]
    fps = 1 + last - tps
    thresholds = s[last]
    if len(fps) > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    fps, tps, thresholds = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def roc_auc(labels, scores) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 = malignant; trapezoids under :func:`roc_curve`,
    as scikit-learn's ``roc_auc_score``); NaN when only one class is present."""
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))
