"""Reading the embedding tables :mod:`duvflow.ssl.embed` writes, without importing torch.

The probes and their summary only read tables; keeping the reader apart from the embedding code
spares those jobs the torch import (seconds per process on a CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["read_embeddings"]


def read_embeddings(path: str | os.PathLike, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """An embeddings parquet -> (metadata DataFrame, float32 (N, dim) matrix), rows aligned."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=None if columns is None else [*columns, "embedding"])
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    matrix = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    meta = table.drop_columns(["embedding"]).to_pandas()
    return meta, matrix
