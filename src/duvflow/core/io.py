"""Atomic output writing: a killed job never leaves a file that looks complete.

Every writer goes to a temporary name in the target's own directory (same filesystem, so the
final ``os.replace`` is atomic) and renames only after the content is flushed. A writer killed
with SIGKILL cannot clean up: its hidden temporary file is swept the next time the same target
is written (one job owns a target, so no live writer shares it). Outputs get the usual mode for
new files (``0666 & ~umask``) whatever their writer chose (safetensors writes ``0600``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "read_json", "write_csv", "write_json", "write_parquet"]

_UMASK = os.umask(0)  # read once, at import (reading it means setting it: not from worker threads)
os.umask(_UMASK)


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
    prefix, tmp_suffix = f".{target.stem}.", f".tmp{suffix}"
    _sweep_stale(target.parent, prefix, tmp_suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=tmp_suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (h5py, savefig, mkdir for folders)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic write of {target}: the writer produced nothing")
        _usual_mode(tmp)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _sweep_stale(folder: Path, prefix: str, suffix: str) -> None:
    """Remove temporaries a killed earlier writer of the same target left behind."""
    # exactly the names mkstemp makes for this target (8 random characters): never another target's
    stale = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix))
    for path in folder.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        if stale.fullmatch(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _usual_mode(path: Path) -> None:
    """Give files the mode a plain ``open`` would (``0666 & ~umask``), folders ``0777 & ~umask``."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        usual = (0o777 if p.is_dir() else 0o666) & ~_UMASK
        if mode | usual != mode:  # only widen to the usual mode; executable bits stay
            os.chmod(p, mode | usual)


def write_json(obj: Any, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON file; a broken one raises ``ValueError`` naming the file and the line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                         "it was cut short or edited by hand: write it again") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (byte {err.start} is not UTF-8 text)") from None


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
