"""Reading the embedding tables :mod:`duvflow.ssl.embed` writes, without importing torch.

The probes and their summary only read tables; keeping the reader apart from the embedding code
spares those jobs the torch import (seconds per process on a CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from duvflow.core.labels import label_to_int

__all__ = ["EMBEDDING_COLUMNS", "read_embeddings"]

EMBEDDING_COLUMNS = ("slide_id", "patch_index", "label", "embedding")  # what readers rely on


def read_embeddings(path: str | os.PathLike, role: str | None = None,
                    columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """An embeddings parquet -> (metadata DataFrame with ``label_int``, float32 (N, dim) matrix), rows
    aligned; ``role`` keeps only the patches of that role, ``columns`` only those metadata columns (plus
    the required ones). Missing columns, ragged embeddings and unknown labels are errors naming the file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    required = [*EMBEDDING_COLUMNS, *(["role"] if role is not None else [])]
    wanted = None if columns is None else list(dict.fromkeys([*required, *columns]))
    try:
        table = pq.read_table(path, columns=wanted)
    except Exception as err:  # pyarrow names no file in its errors
        raise ValueError(f"embedding table {path} cannot be read: {err}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"embedding table {path} lacks column(s) {', '.join(missing)}")
    if role is not None:
        table = table.filter(pc.equal(table["role"], role))
    column = table.column("embedding").combine_chunks()
    n = len(table)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if n and flat.size % n:
        raise ValueError(f"embedding table {path}: the embeddings do not all have the same length")
    embeddings = flat.reshape(n, -1 if n else 0)
    meta = table.drop_columns(["embedding"]).to_pandas()
    meta["patch_index"] = meta["patch_index"].astype("int64")
    meta["slide_id"] = meta["slide_id"].astype(str)
    try:
        meta["label_int"] = label_to_int(meta["label"]) if n else np.zeros(0, np.int64)
    except ValueError as err:
        raise ValueError(f"embedding table {path}: {err}") from None
    return meta, embeddings
