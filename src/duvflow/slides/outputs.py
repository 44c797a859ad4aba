"""Writing a slide's tiling outputs: the packed patch store (patches read, judged and compressed) and the tile table."""

from __future__ import annotations

import collections
import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from duvflow.core.io import atomic_path, write_parquet
from duvflow.core.runtime import progress
from duvflow.slides.config import TilingConfig
from duvflow.slides.patch_qc import PatchQC
from duvflow.slides.reader import Slide
from duvflow.slides.status import TilingStatus
from duvflow.slides.store import PatchStoreWriter

__all__ = ["TABLE_COLUMNS", "StoreResult", "empty_table", "write_store", "write_table"]

TABLE_COLUMNS = ("slide_id", "patch_index", "x", "y", "level", "size", "size_level0", "tissue_fraction",
                 "background_fraction", "focus", "pen_fraction", "label")


@dataclass
class StoreResult:
    """Which of the offered patches were stored (positions into the offered list) and their QC values."""

    kept: list[int] = dataclasses.field(default_factory=list)
    focus: list[float] = dataclasses.field(default_factory=list)
    background_fraction: list[float] = dataclasses.field(default_factory=list)
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _store_attrs(cfg: TilingConfig, status: TilingStatus) -> dict:
    attrs = {"slide_id": status.slide_id, "level": cfg.level, "status": status.status,
             "compression": cfg.store_compression}
    for key in ("mpp", "size_level0", "downsample"):
        if getattr(status, key) is not None:
            attrs[key] = getattr(status, key)
    return attrs


def write_store(path, coords: list[tuple[int, int]], cfg: TilingConfig, status: TilingStatus, slide: Slide | None,
                *, size: int | None = None, fill=(0, 0, 0), threads: int = 1, qc: PatchQC | None = None) -> StoreResult:
    """Read the patches at ``coords`` (level-0 corners) in order; store those that pass ``qc``."""
    size = size or cfg.patch_size
    result = StoreResult()
    with atomic_path(path) as tmp, PatchStoreWriter(tmp, len(coords), size, compression=cfg.store_compression,
                                                    attrs=_store_attrs(cfg, status)) as writer:
        if not coords:
            return result

        def read(xy: tuple[int, int]):
            patch = slide.read_rgb(xy, cfg.level, (size, size), fill)
            verdict = qc.judge(patch) if qc is not None else None
            encoded = writer.encode(patch) if verdict is None or verdict.failed is None else None
            return verdict, encoded

        def take(i: int, xy, verdict, encoded) -> None:
            if verdict is not None and verdict.failed is not None:
                result.failed[verdict.failed] += 1
                return
            writer.write_encoded(len(result.kept), *encoded, xy)
            result.kept.append(i)
            result.focus.append(verdict.focus if verdict else float("nan"))
            result.background_fraction.append(verdict.background_fraction if verdict else float("nan"))

        bar = progress(total=len(coords), desc=f"tiling {status.slide_id}", unit="patch")
        # Plain images go through PIL; keep those single-threaded.
        workers = max(1, int(threads)) if slide.kind == "openslide" else 1
        if workers == 1:
            for i, xy in enumerate(coords):
                take(i, xy, *read(xy))
                bar.update()
        else:
            # A bounded window of in-flight patches keeps memory flat; writes stay in order.
            window = collections.deque()
            with ThreadPoolExecutor(workers, thread_name_prefix="tile") as pool:
                for i, xy in enumerate(coords):
                    window.append((i, xy, pool.submit(read, xy)))
                    if len(window) >= 4 * workers:
                        j, xy_j, fut = window.popleft()
                        take(j, xy_j, *fut.result())
                        bar.update()
                while window:
                    j, xy_j, fut = window.popleft()
                    take(j, xy_j, *fut.result())
                    bar.update()
        bar.close()
        writer.truncate(len(result.kept))
    return result


def empty_table() -> pd.DataFrame:
    ints = {c: np.zeros(0, np.int64) for c in ("patch_index", "x", "y", "level", "size", "size_level0")}
    floats = {c: np.zeros(0, np.float64) for c in ("tissue_fraction", "background_fraction", "focus", "pen_fraction")}
    return pd.DataFrame({"slide_id": pd.Series([], dtype=str), **ints, **floats, "label": pd.Series([], dtype=str)})


def write_table(path, table: pd.DataFrame, cfg: TilingConfig, status: TilingStatus) -> None:
    from duvflow.core.provenance import code_version

    write_parquet(table[list(TABLE_COLUMNS)], path, metadata={
        "duvflow_version": code_version(), "status": status.status, "slide_path": status.path,
        "tiling_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)})
