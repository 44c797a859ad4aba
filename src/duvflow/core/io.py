"""Atomic output writing: a killed job never leaves a file that looks complete.

Every writer goes to a temporary name in the target's own directory (same filesystem, so the
final ``os.replace`` is atomic) and renames only after the content is flushed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "read_json", "write_csv", "write_json", "write_parquet"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any exception the temporary file (or directory) is removed and ``target`` is untouched.
    ``suffix`` defaults to the target's own suffix, so writers that infer a format from the
    extension (PIL, matplotlib, h5py) keep working.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (h5py, savefig, mkdir for folders)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic write of {target}: the writer produced nothing")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(obj: Any, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(df, target: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a DataFrame (or a pyarrow Table, e.g. with fixed-size list columns) as parquet atomically;
    ``metadata`` goes into the file's key-value store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def write_csv(df, target: str | os.PathLike, **kwargs) -> None:
    with atomic_path(target) as tmp:
        sep = "\t" if Path(target).suffix == ".tsv" else ","
        df.to_csv(tmp, index=False, sep=sep, **kwargs)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
