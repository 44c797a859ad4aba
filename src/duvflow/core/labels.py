"""The label vocabulary: slide and patch labels are ``benign`` or ``malignant`` (0 and 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["LABELS", "label_to_int"]

# index = integer label: 0 benign, 1 malignant (the positive class of every metric)
LABELS = ("benign", "malignant")


def label_to_int(labels) -> np.ndarray:
    """``benign``/``malignant`` (any case) or 0/1 -> int array; anything else is an error."""
    s = pd.Series(labels)
    if s.dtype.kind in "iub":
        out = s.astype(int)
    else:
        out = s.astype(str).str.strip().str.lower().map({"benign": 0, "malignant": 1, "0": 0, "1": 1})
    if out.isna().any() or not out.isin([0, 1]).all():
        bad = sorted(set(map(str, s[out.isna() | ~out.isin([0, 1])])))[:5]
        raise ValueError(f"labels must be benign/malignant, got {bad}")
    return out.to_numpy(dtype=np.int64)
