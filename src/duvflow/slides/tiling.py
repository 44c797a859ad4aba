"""Tiling one slide: tissue mask, patch grid, patch QC, the packed patch store, the tile table, status and QC.

:func:`tile_slide` is the ``tile_slide`` rule's function. It finds tissue on a low-resolution
thumbnail (:mod:`duvflow.slides.tissue`), lays a non-overlapping grid of square patches over the
configured pyramid level (:mod:`duvflow.slides.grid`), keeps the patches whose tissue fraction
reaches ``min_tissue_fraction``, reads them in row-major order with OpenSlide, drops those that
fail patch QC (:mod:`duvflow.slides.patch_qc`) and packs the rest into one HDF5 store
(:mod:`duvflow.slides.outputs`). Outputs (see ``docs/architecture.md``): ``tiles/{slide}.parquet``,
``tiles/{slide}.h5``, ``tiles/{slide}.json`` (:class:`~duvflow.slides.status.TilingStatus`) and a QC
thumbnail (:mod:`duvflow.slides.qc_images`); each is written atomically, the status JSON last.

A slide that cannot be used raises :class:`~duvflow.slides.errors.SlideReadError` (naming the file
and the reason) or, with ``on_bad_slide: skip``, is recorded as ``"skipped"`` with empty outputs.
A slide without a single tissue patch is recorded as ``"no_tissue"``.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd

from duvflow.core.io import write_json
from duvflow.slides.config import TilingConfig
from duvflow.slides.errors import SlideReadError
from duvflow.slides.grid import PatchGrid, patch_grid, resolve_patch_size, tissue_fractions
from duvflow.slides.outputs import TABLE_COLUMNS, empty_table, write_store, write_table
from duvflow.slides.patch_qc import PatchQC
from duvflow.slides.qc_images import render_message, render_qc, save_png
from duvflow.slides.reader import Slide, composite, open_slide
from duvflow.slides.status import TilingStatus
from duvflow.slides.tissue import TissueMask, detect_tissue, pen_marks

__all__ = [
    "TABLE_COLUMNS",
    "PatchGrid",
    "TilingConfig",
    "patch_grid",
    "resolve_patch_size",
    "tile_slide",
    "tissue_fractions",
]

_log = logging.getLogger(__name__)


def tile_slide(*, slide: str | os.PathLike, slide_id: str, label: str, tiling: dict, tiles: str | os.PathLike,
               store: str | os.PathLike, status: str | os.PathLike, thumbnail: str | os.PathLike,
               threads: int = 1) -> dict:
    """Tile one slide into ``store`` + ``tiles`` table; write ``status`` JSON and the QC ``thumbnail``.

    Returns the status record. ``threads`` > 1 reads and compresses patches in worker threads
    (OpenSlide and the compressor release the GIL); the output does not depend on it.
    """
    cfg = TilingConfig.from_dict(tiling)
    t_start = time.perf_counter()
    record = TilingStatus(slide_id=slide_id, label=label, path=str(slide), background_requested=cfg.background,
                          level=cfg.level, patch_um=cfg.patch_um, min_tissue_fraction=cfg.min_tissue_fraction)
    try:
        with open_slide(slide, channel_colours=cfg.channel_colours) as s:
            _tile(s, cfg, record, tiles=tiles, store=store, thumbnail=thumbnail, threads=threads)
    except SlideReadError as err:
        if cfg.on_bad_slide == "fail":
            raise
        _log.warning("skipping %s (on_bad_slide: skip): %s", slide_id, err)
        record.status, record.reason, record.n_patches = "skipped", err.reason, 0
        write_store(store, [], cfg, record, None)
        write_table(tiles, empty_table(), cfg, record)
        save_png(render_message(slide_id, label, "SKIPPED", f"{err.path}\n{err.reason}"), thumbnail)
    record.elapsed_s = round(time.perf_counter() - t_start, 3)
    from duvflow.core.provenance import code_version

    record.duvflow_version = code_version()
    out = record.to_dict()
    write_json(out, status)
    _log.info("%s: %s, %d patches (%s)", slide_id, record.status, record.n_patches, record.reason or "ok")
    return out


def _tile(slide: Slide, cfg: TilingConfig, record: TilingStatus, *, tiles, store, thumbnail, threads: int) -> None:
    size = _describe(slide, cfg, record)
    thumb_rgba, thumb_ds = slide.thumbnail(cfg.thumbnail_max)
    tissue, pen = _find_tissue(thumb_rgba, cfg, record)
    fill = slide.background_color or tissue.background_rgb
    w0, h0 = slide.dimensions
    th, tw = tissue.mask.shape
    scale = (tw / w0, th / h0)
    tissue_px = float(tissue.mask.sum()) / (scale[0] * scale[1])
    record.tissue_area_px, record.background_rgb = round(tissue_px), list(fill)
    if record.mpp_x is not None:
        record.tissue_area_mm2 = round(tissue_px * record.mpp_x * record.mpp_y / 1e6, 6)

    # the patch grid, each patch's tissue (and pen) fraction, then patch QC on the pixels read
    grid = patch_grid(slide, cfg.level, size)
    record.size_level0, record.downsample, record.n_candidates = grid.size_level0, grid.downsample, len(grid)
    if grid.size_level0 * min(scale) < 2:
        record.problems.append("patches span < 2 thumbnail pixels: raise thumbnail_max for a finer tissue mask")
    fractions = tissue_fractions(tissue.mask, scale, grid.x, grid.y, grid.size_level0)
    pen_fractions = tissue_fractions(pen, scale, grid.x, grid.y, grid.size_level0)
    idx = np.flatnonzero(fractions >= cfg.min_tissue_fraction)
    record.n_tissue_patches = len(idx)
    _set_outcome(record, slide, cfg, grid, tissue, after_qc=False)  # the store's attrs carry the status
    qc = PatchQC.for_slide(cfg, tissue)
    pen_failed = qc.pen_failures(pen_fractions[idx])
    record.n_filtered_pen = int(pen_failed.sum())
    idx = idx[~pen_failed]
    result = write_store(store, list(zip(grid.x[idx].tolist(), grid.y[idx].tolist(), strict=True)), cfg, record,
                         slide, size=size, fill=fill, threads=threads, qc=qc)
    record.n_filtered_background = result.failed["background"]
    record.n_filtered_focus = result.failed["focus"]
    kept = idx[np.asarray(result.kept, np.int64)]
    table = _table(record, grid, kept, fractions, pen_fractions, result)
    record.n_patches = len(table)
    _set_outcome(record, slide, cfg, grid, tissue, after_qc=True)
    write_table(tiles, table, cfg, record)
    save_png(render_qc(composite(thumb_rgba, fill), tissue, thumb_ds, table, record, pen), thumbnail)


def _describe(slide: Slide, cfg: TilingConfig, record: TilingStatus) -> int:
    """Record what the slide is (size, levels, MPP and its source); returns the patch edge at ``cfg.level``."""
    slide.check_level(cfg.level)
    size, mpp, mpp_source = resolve_patch_size(cfg, slide)
    w0, h0 = slide.dimensions
    record.dimensions, record.level_count, record.vendor = [w0, h0], slide.level_count, slide.vendor
    record.patch_size, record.mpp_source = size, mpp_source
    if mpp is not None:
        record.mpp, record.mpp_x, record.mpp_y = (mpp[0] + mpp[1]) / 2, mpp[0], mpp[1]
        if abs(mpp[0] - mpp[1]) > 0.02 * max(mpp):
            record.problems.append(f"non-square pixels (mpp {mpp[0]:.4g} x {mpp[1]:.4g})")
    record.problems.extend(slide.notes)
    if mpp_source is None:
        record.problems.append("no MPP metadata")
    elif mpp_source == "default_mpp":
        record.problems.append(f"no MPP metadata; default_mpp {cfg.default_mpp} assumed")
    return size


def _find_tissue(thumb_rgba: np.ndarray, cfg: TilingConfig, record: TilingStatus) -> tuple[TissueMask, np.ndarray]:
    """The tissue mask (and the pen-ink mask, bright-field only) of the thumbnail, recorded in ``record``."""
    valid = thumb_rgba[..., 3] >= 128
    # Before the background is known, transparent pixels are shown as their own (black) RGB;
    # tissue detection ignores them through the alpha mask anyway.
    rgb = np.ascontiguousarray(thumb_rgba[..., :3])
    tissue = detect_tissue(rgb, valid, cfg.background)
    pen = pen_marks(rgb, valid) & tissue.mask if tissue.background == "bright" else np.zeros_like(tissue.mask)
    record.background, record.background_method = tissue.background, tissue.background_method
    record.background_found, record.background_noise = tissue.background_found, round(tissue.noise, 3)
    record.glass_fraction, record.dark_fraction = round(tissue.glass_fraction, 4), round(tissue.dark_fraction, 4)
    record.pen_fraction = round(float(pen.mean()), 6)
    record.tissue_fraction, record.threshold = round(tissue.fraction, 6), tissue.threshold
    if tissue.mask.any():
        step = max(1, int(np.sqrt(tissue.mask.sum() / 250_000)))  # the median of a subsample will do
        sample = rgb[::step, ::step][tissue.mask[::step, ::step]]
        record.tissue_rgb = [int(v) for v in np.median(sample, axis=0)]
    if not tissue.background_found and tissue.fraction > 0:
        record.problems.append(f"no {tissue.background} background in view: the whole slide is taken as tissue")
    elif tissue.fraction > 0.9:
        record.problems.append(f"tissue covers {100 * tissue.fraction:.0f}% of the slide: check the background "
                               f"mode ({tissue.background})")
    return tissue, pen


def _table(record: TilingStatus, grid: PatchGrid, kept: np.ndarray, fractions: np.ndarray,
           pen_fractions: np.ndarray, result) -> pd.DataFrame:
    n = len(kept)
    return pd.DataFrame({
        "slide_id": pd.Series([record.slide_id] * n, dtype=str),
        "patch_index": np.arange(n, dtype=np.int64),
        "x": grid.x[kept], "y": grid.y[kept],
        "level": np.full(n, grid.level, np.int64),
        "size": np.full(n, grid.size, np.int64),
        "size_level0": np.full(n, grid.size_level0, np.int64),
        "tissue_fraction": fractions[kept].astype(np.float64),
        "background_fraction": np.asarray(result.background_fraction, np.float64),
        "focus": np.asarray(result.focus, np.float64),
        "pen_fraction": pen_fractions[kept].astype(np.float64),
        "label": pd.Series([record.label] * n, dtype=str),
    })


def _set_outcome(record: TilingStatus, slide: Slide, cfg: TilingConfig, grid: PatchGrid, tissue: TissueMask, *,
                 after_qc: bool) -> None:
    """``no_tissue`` with the reason when no patch was kept (before patch QC: when none can be)."""
    filtered = record.n_filtered_background + record.n_filtered_focus + record.n_filtered_pen
    if record.status != "ok":
        return
    if len(grid) == 0:
        lw, lh = slide.level_dimensions[cfg.level]
        record.status, record.reason = "no_tissue", f"no {grid.size} px patch fits in level {cfg.level} ({lw}x{lh} px)"
    elif record.n_tissue_patches == 0:
        record.status, record.reason = "no_tissue", (f"no patch has >= {cfg.min_tissue_fraction:g} tissue "
                                                     f"({100 * tissue.fraction:.2f}% of the slide is tissue)")
    elif after_qc and record.n_patches == 0:
        record.status, record.reason = "no_tissue", (
            f"all {record.n_tissue_patches} tissue patches failed patch QC ({record.n_filtered_background} "
            f"background, {record.n_filtered_focus} focus, {record.n_filtered_pen} pen)")
    if after_qc and filtered:
        _log.info("%s: patch QC dropped %d of %d tissue patches (%d background, %d focus, %d pen)", slide.path,
                  filtered, record.n_tissue_patches, record.n_filtered_background, record.n_filtered_focus,
                  record.n_filtered_pen)
    if record.status == "no_tissue" and (after_qc or record.n_tissue_patches == 0):
        _log.warning("%s: %s", slide.path, record.reason)
