"""Metrics used by more than one stage (the classifier's model selection and the evaluation)."""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc"]


def roc_auc(labels, scores) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 = malignant); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))
