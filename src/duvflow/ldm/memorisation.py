"""Memorisation audit: is a synthetic patch a near copy of a real training patch?

For every synthetic patch, the distance to its nearest real training patch in a feature space
(Inception-v3 pool features, or the fold's DINO teacher embedding, L2-normalised), compared with
the distribution of real-to-real nearest-neighbour distances (each real patch against the others).
A synthetic patch closer to a real one than the ``percentile``-th percentile of the real-to-real
distances is a "near copy": real patches of one cohort are rarely that close to each other, so a
generator that lands there is reproducing its training data rather than sampling new tissue.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

__all__ = ["MemorisationAudit", "audit_memorisation", "nearest_neighbours"]

_log = logging.getLogger(__name__)


def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, *, exclude_self: bool = False,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance to, and index of, each query's nearest reference row.

    ``exclude_self`` (queries are the reference set itself) skips the diagonal, so a point is not its own
    neighbour. Chunked, so memory stays at ``chunk x len(reference)`` distances.
    """
    queries, reference = queries.double(), reference.double()
    if len(reference) < (2 if exclude_self else 1):
        raise ValueError(f"need at least {2 if exclude_self else 1} reference rows for nearest neighbours")
    dists, idx = [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], reference)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = torch.inf
        best = d.min(dim=1)
        dists.append(best.values)
        idx.append(best.indices)
    if not dists:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(dists).numpy(), torch.cat(idx).numpy()


@dataclasses.dataclass(frozen=True)
class MemorisationAudit:
    """One feature space's audit of a synthetic set against the real training patches."""

    space: str
    threshold: float  # the percentile of real-to-real nearest-neighbour distances
    percentile: float
    near_copy_fraction: float
    n_near_copies: int
    synthetic_distance: np.ndarray  # per synthetic patch: distance to its nearest real patch
    nearest_real: np.ndarray  # per synthetic patch: index of that real patch
    real_distance: np.ndarray  # per real patch: distance to its nearest other real patch

    def summary(self) -> dict:
        """The JSON fields of this audit (prefixed by the feature space)."""
        return {f"near_copy_fraction_{self.space}": self.near_copy_fraction,
                f"near_copies_{self.space}": self.n_near_copies,
                f"near_copy_threshold_{self.space}": self.threshold,
                f"nn_distance_median_{self.space}": float(np.median(self.synthetic_distance)),
                f"nn_distance_real_median_{self.space}": float(np.median(self.real_distance))}


def audit_memorisation(real: torch.Tensor, synthetic: torch.Tensor, *, space: str,
                       percentile: float = 1.0, normalise: bool = False) -> MemorisationAudit:
    """Near copies among ``synthetic`` features with respect to ``real`` features (rows = patches)."""
    if normalise:
        real = torch.nn.functional.normalize(real.double(), dim=1)
        synthetic = torch.nn.functional.normalize(synthetic.double(), dim=1)
    real_dist, _ = nearest_neighbours(real, real, exclude_self=True)
    syn_dist, syn_idx = nearest_neighbours(synthetic, real)
    threshold = float(np.percentile(real_dist, percentile))
    near = syn_dist < threshold
    audit = MemorisationAudit(space=space, threshold=threshold, percentile=percentile,
                              near_copy_fraction=float(near.mean()) if len(near) else 0.0,
                              n_near_copies=int(near.sum()), synthetic_distance=syn_dist, nearest_real=syn_idx,
                              real_distance=real_dist)
    if audit.n_near_copies:
        _log.warning("%s space: %d of %d synthetic patches (%.1f%%) are near copies of a training patch (closer "
                     "than the %g-th percentile of real-to-real distances, %.4g)", space, audit.n_near_copies,
                     len(near), 100 * audit.near_copy_fraction, percentile, threshold)
    return audit
