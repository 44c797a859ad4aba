"""How many synthetic patches a training set gets, split by label, and the nested subsets of a
fraction sweep: the sampler (:mod:`duvflow.ldm.sample`) and the classifier's data loading
(:mod:`duvflow.classifier.data`) count alike."""

from __future__ import annotations

import numpy as np

__all__ = ["label_quota", "nested_subset", "synthetic_count"]


def synthetic_count(n_real: int, fraction: float) -> int:
    """Synthetic patches that make up ``fraction`` of real + synthetic: n_real * f / (1 - f)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"synthetic fraction must be in [0, 1), got {fraction}")
    return round(n_real * fraction / (1.0 - fraction))


def label_quota(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, per_class)``: ``n`` split over the labels in proportion to their counts in
    ``labels`` (largest remainder; ties to the earlier class)."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    share = counts / counts.sum() * n if len(counts) else counts.astype(float)
    per_class = np.floor(share).astype(int)
    for i in np.argsort(-(share - per_class), kind="stable")[: n - per_class.sum()]:
        per_class[i] += 1
    return classes, per_class


def nested_subset(set_labels: np.ndarray, real_labels: np.ndarray, n: int) -> np.ndarray:
    """Rows of a synthetic set (labels ``set_labels``, in plan order) for ``n`` synthetic patches beside
    the real training patches ``real_labels``: per label, the first k of its rows, with k the share
    :func:`label_quota` gives it (the split the sampler plans with).

    A smaller ``n`` gives a subset of a larger one's rows (for two labels the quota grows with ``n``),
    and while no label's quota exceeds its real patches the first k rows of a label are the conditions
    the sampler would have drawn for k alone (one permutation per label): each subset is the plan of a
    sampler asked for fewer patches. Raises when a label lacks rows.
    """
    set_labels = np.asarray(set_labels)
    classes, per_class = label_quota(real_labels, n)
    rows = []
    for lab, k in zip(classes, per_class, strict=True):
        pool = np.flatnonzero(set_labels == lab)
        if k > len(pool):
            raise ValueError(f"the synthetic set has {len(pool)} patch(es) of label {lab!r}, {k} are needed: it was "
                             "sampled for a smaller fraction or another real training set")
        rows.append(pool[:k])
    return np.sort(np.concatenate(rows)).astype(np.int64) if rows else np.zeros(0, np.int64)
