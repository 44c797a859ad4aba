"""Tiling one slide: tissue mask, patch grid, the packed patch store, the tile table, status and QC.

:func:`tile_slide` is the ``tile_slide`` rule's function. It finds tissue on a low-resolution
thumbnail (:mod:`duvflow.slides.tissue`), lays a non-overlapping grid of square patches over the
configured pyramid level, keeps the patches whose tissue fraction reaches ``min_tissue_fraction``,
reads them in row-major order with OpenSlide and packs them into one HDF5 store. Outputs (see
``docs/architecture.md``): ``tiles/{slide}.parquet``, ``tiles/{slide}.h5``, ``tiles/{slide}.json``
and a QC thumbnail; each is written atomically, the status JSON last.

A slide that cannot be used raises :class:`~duvflow.slides.reader.SlideReadError` (naming the file
and the reason) or, with ``on_bad_slide: skip``, is recorded as ``"skipped"`` with empty outputs.
A slide without a single tissue patch is recorded as ``"no_tissue"``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_json, write_parquet
from duvflow.core.runtime import progress
from duvflow.slides.reader import MissingMPPError, Slide, SlideReadError, composite, open_slide
from duvflow.slides.store import _COMPRESSION, PatchStoreWriter
from duvflow.slides.tissue import BACKGROUNDS, TissueMask, detect_tissue

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

TABLE_COLUMNS = ("slide_id", "patch_index", "x", "y", "level", "size", "size_level0", "tissue_fraction", "label")
_QC_MAX = 1024  # longest edge of the QC thumbnail PNG
_MIN_PATCH_PX = 16


@dataclass(frozen=True)
class TilingConfig:
    """The ``tiling`` config section (see workflow/schemas/config.schema.yaml)."""

    level: int = 0
    patch_size: int = 400
    patch_um: float | None = None
    default_mpp: float | None = None
    background: str = "auto"
    min_tissue_fraction: float = 0.5
    thumbnail_max: int = 2048
    on_bad_slide: str = "fail"
    store_compression: str = "lzf"

    @classmethod
    def from_dict(cls, d: dict | None) -> TilingConfig:
        cfg = from_dict(cls, d, "tiling")
        problems = []
        if not (isinstance(cfg.level, int) and cfg.level >= 0):
            problems.append(f"level must be an integer >= 0, got {cfg.level!r}")
        if not (isinstance(cfg.patch_size, int) and cfg.patch_size >= _MIN_PATCH_PX):
            problems.append(f"patch_size must be an integer >= {_MIN_PATCH_PX}, got {cfg.patch_size!r}")
        for key in ("patch_um", "default_mpp"):
            v = getattr(cfg, key)
            if v is not None and not (isinstance(v, int | float) and v > 0):
                problems.append(f"{key} must be a positive number or null, got {v!r}")
        if cfg.background not in BACKGROUNDS:
            problems.append(f"background must be one of {', '.join(BACKGROUNDS)}, got {cfg.background!r}")
        if not (isinstance(cfg.min_tissue_fraction, int | float) and 0 <= cfg.min_tissue_fraction <= 1):
            problems.append(f"min_tissue_fraction must be in [0, 1], got {cfg.min_tissue_fraction!r}")
        if not (isinstance(cfg.thumbnail_max, int) and cfg.thumbnail_max >= 64):
            problems.append(f"thumbnail_max must be an integer >= 64, got {cfg.thumbnail_max!r}")
        if cfg.on_bad_slide not in ("fail", "skip"):
            problems.append(f"on_bad_slide must be 'fail' or 'skip', got {cfg.on_bad_slide!r}")
        if cfg.store_compression not in _COMPRESSION:
            problems.append(f"store_compression must be one of {', '.join(_COMPRESSION)}, got {cfg.store_compression!r}")
        if problems:
            raise ValueError("invalid tiling config: " + "; ".join(problems))
        return cfg


@dataclass(frozen=True)
class PatchGrid:
    """Candidate patches: level-0 top-left corners, row-major, of square patches at ``level``."""

    x: np.ndarray  # int64, level-0 pixels
    y: np.ndarray
    level: int
    size: int  # edge at `level`
    size_level0: int  # edge at level 0
    downsample: float

    def __len__(self) -> int:
        return len(self.x)


def patch_grid(slide: Slide, level: int, size: int) -> PatchGrid:
    """Non-overlapping ``size``-pixel patches at ``level`` that lie wholly inside the slide.

    The grid steps by the patch's level-0 extent, so patches never overlap in level-0 coordinates
    even when a level's downsample is not a whole number (odd dimensions, vendor pyramids).
    """
    slide.check_level(level)
    lw, lh = slide.level_dimensions[level]
    w0, h0 = slide.dimensions
    ds = slide.level_downsamples[level]
    size0 = round(size * ds)
    xs = np.arange(0, w0 - size0 + 1, size0, dtype=np.int64)
    ys = np.arange(0, h0 - size0 + 1, size0, dtype=np.int64)
    # ...and inside the level itself (its dimensions are rounded)
    xs = xs[np.floor(xs / ds).astype(np.int64) + size <= lw]
    ys = ys[np.floor(ys / ds).astype(np.int64) + size <= lh]
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # row-major: the reading order of the store
    return PatchGrid(x=xx.ravel(), y=yy.ravel(), level=level, size=size, size_level0=size0, downsample=ds)


def tissue_fractions(mask: np.ndarray, scale: tuple[float, float], x: np.ndarray, y: np.ndarray,
                     size0: int) -> np.ndarray:
    """Fraction of each level-0 box ``[x, x + size0) x [y, y + size0)`` covered by ``mask``.

    ``scale`` is (mask pixels per level-0 pixel) in x and y. Exact area coverage of the mask's
    pixels, also for boxes that cut mask pixels: bilinear interpolation of the summed-area table is
    the exact integral of a piecewise-constant image.
    """
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def integral(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        px = np.clip(px, 0, w)
        py = np.clip(py, 0, h)
        ix = np.minimum(np.floor(px).astype(np.int64), w - 1)
        iy = np.minimum(np.floor(py).astype(np.int64), h - 1)
        fx, fy = px - ix, py - iy
        return (sat[iy, ix] * (1 - fx) * (1 - fy) + sat[iy, ix + 1] * fx * (1 - fy)
                + sat[iy + 1, ix] * (1 - fx) * fy + sat[iy + 1, ix + 1] * fx * fy)

    sx, sy = scale
    x_lo, x_hi = x * sx, (x + size0) * sx
    y_lo, y_hi = y * sy, (y + size0) * sy
    area = integral(x_hi, y_hi) - integral(x_lo, y_hi) - integral(x_hi, y_lo) + integral(x_lo, y_lo)
    box = (np.clip(x_hi, 0, w) - np.clip(x_lo, 0, w)) * (np.clip(y_hi, 0, h) - np.clip(y_lo, 0, h))
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(box > 0, area / box, 0.0)
    return np.clip(frac, 0.0, 1.0)


def resolve_patch_size(cfg: TilingConfig, slide: Slide) -> tuple[int, tuple[float, float] | None, str | None]:
    """Patch edge in pixels at ``cfg.level``, and the microns per pixel used (with its source)."""
    mpp, source = slide.mpp_xy, slide.mpp_source
    if mpp is None and cfg.default_mpp is not None:
        mpp, source = (float(cfg.default_mpp),) * 2, "default_mpp"
    if cfg.patch_um is None:
        return cfg.patch_size, mpp, source
    if mpp is None:
        raise MissingMPPError(slide.path, f"tiling.patch_um={cfg.patch_um} needs microns per pixel, but the slide "
                                          "has no MPP metadata (openslide.mpp-x/y or TIFF resolution tags); "
                                          "set tiling.default_mpp or give the patch size in pixels (patch_size)")
    slide.check_level(cfg.level)
    size = round(cfg.patch_um / ((mpp[0] + mpp[1]) / 2 * slide.level_downsamples[cfg.level]))
    if size < _MIN_PATCH_PX:
        raise SlideReadError(slide.path, f"tiling.patch_um={cfg.patch_um} is only {size} px at level {cfg.level} "
                                         f"(mpp {mpp[0]:.4g}); use a larger patch_um or a finer level")
    return size, mpp, source


def tile_slide(*, slide: str | os.PathLike, slide_id: str, label: str, tiling: dict, tiles: str | os.PathLike,
               store: str | os.PathLike, status: str | os.PathLike, thumbnail: str | os.PathLike,
               threads: int = 1) -> dict:
    """Tile one slide into ``store`` + ``tiles`` table; write ``status`` JSON and the QC ``thumbnail``.

    Returns the status record. ``threads`` > 1 reads and compresses patches in worker threads
    (OpenSlide and the compressor release the GIL); the output does not depend on it.
    """
    cfg = TilingConfig.from_dict(tiling)
    t_start = time.perf_counter()
    record = {"slide_id": slide_id, "label": label, "path": str(slide), "status": "ok", "reason": "",
              "n_patches": 0, "n_candidates": 0, "background": None, "background_requested": cfg.background,
              "tissue_area_mm2": None, "tissue_area_px": None, "tissue_fraction": None, "mpp": None,
              "mpp_x": None, "mpp_y": None, "mpp_source": None, "level": cfg.level, "patch_size": None,
              "size_level0": None, "patch_um": cfg.patch_um, "min_tissue_fraction": cfg.min_tissue_fraction,
              "dimensions": None, "level_count": None, "vendor": None, "problems": []}
    try:
        with open_slide(slide) as s:
            _tile(s, cfg, record, tiles=tiles, store=store, thumbnail=thumbnail, threads=threads)
    except SlideReadError as err:
        if cfg.on_bad_slide == "fail":
            raise
        _log.warning("skipping %s (on_bad_slide: skip): %s", slide_id, err)
        record.update(status="skipped", reason=err.reason, n_patches=0)
        _write_store(store, [], cfg, record, None)
        _write_table(tiles, _empty_table(), cfg, record)
        _save_png(_render_message(slide_id, label, "SKIPPED", f"{err.path}\n{err.reason}"), thumbnail)
    record["elapsed_s"] = round(time.perf_counter() - t_start, 3)
    from duvflow.core.provenance import code_version

    record["duvflow_version"] = code_version()
    write_json(record, status)
    _log.info("%s: %s, %d patches (%s)", slide_id, record["status"], record["n_patches"], record["reason"] or "ok")
    return record


def _tile(slide: Slide, cfg: TilingConfig, record: dict, *, tiles, store, thumbnail, threads: int) -> None:
    slide.check_level(cfg.level)
    size, mpp, mpp_source = resolve_patch_size(cfg, slide)
    w0, h0 = slide.dimensions
    record.update(dimensions=[w0, h0], level_count=slide.level_count, vendor=slide.vendor, patch_size=size,
                  mpp_source=mpp_source)
    if mpp is not None:
        record.update(mpp=(mpp[0] + mpp[1]) / 2, mpp_x=mpp[0], mpp_y=mpp[1])
        if abs(mpp[0] - mpp[1]) > 0.02 * max(mpp):
            record["problems"].append(f"non-square pixels (mpp {mpp[0]:.4g} x {mpp[1]:.4g})")
    record["problems"].extend(slide.notes)
    if mpp_source is None:
        record["problems"].append("no MPP metadata")
    elif mpp_source == "default_mpp":
        record["problems"].append(f"no MPP metadata; default_mpp {cfg.default_mpp} assumed")

    # 1. tissue on the thumbnail
    thumb_rgba, thumb_ds = slide.thumbnail(cfg.thumbnail_max)
    valid = thumb_rgba[..., 3] >= 128
    rgb = _composite(thumb_rgba, None)
    tissue = detect_tissue(rgb, valid, cfg.background)
    fill = slide.background_color or tissue.background_rgb
    th, tw = tissue.mask.shape
    scale = (tw / w0, th / h0)
    tissue_px = float(tissue.mask.sum()) / (scale[0] * scale[1])
    record.update(background=tissue.background, tissue_area_px=round(tissue_px), background_rgb=list(fill),
                  tissue_fraction=round(tissue.fraction, 6), threshold=tissue.threshold)
    if mpp is not None:
        record["tissue_area_mm2"] = round(tissue_px * mpp[0] * mpp[1] / 1e6, 6)
    if tissue.fraction > 0.9:
        record["problems"].append(f"tissue covers {100 * tissue.fraction:.0f}% of the slide: check the background "
                                  f"mode ({tissue.background})")

    # 2. the patch grid and each patch's tissue fraction
    grid = patch_grid(slide, cfg.level, size)
    record.update(size_level0=grid.size_level0, downsample=grid.downsample, n_candidates=len(grid))
    if grid.size_level0 * min(scale) < 2:
        record["problems"].append("patches span < 2 thumbnail pixels: raise thumbnail_max for a finer tissue mask")
    fractions = tissue_fractions(tissue.mask, scale, grid.x, grid.y, grid.size_level0)
    idx = np.flatnonzero(fractions >= cfg.min_tissue_fraction)
    table = pd.DataFrame({
        "slide_id": pd.Series([record["slide_id"]] * len(idx), dtype=str),
        "patch_index": np.arange(len(idx), dtype=np.int64),
        "x": grid.x[idx], "y": grid.y[idx],
        "level": np.full(len(idx), cfg.level, np.int64),
        "size": np.full(len(idx), size, np.int64),
        "size_level0": np.full(len(idx), grid.size_level0, np.int64),
        "tissue_fraction": fractions[idx].astype(np.float64),
        "label": pd.Series([record["label"]] * len(idx), dtype=str),
    })
    if len(grid) == 0:
        record.update(status="no_tissue", reason=f"no {size} px patch fits in level {cfg.level} "
                                                 f"({slide.level_dimensions[cfg.level][0]}x"
                                                 f"{slide.level_dimensions[cfg.level][1]} px)")
    elif len(idx) == 0:
        record.update(status="no_tissue", reason=f"no patch has >= {cfg.min_tissue_fraction:g} tissue "
                                                 f"({100 * tissue.fraction:.2f}% of the slide is tissue)")
    if record["status"] == "no_tissue":
        _log.warning("%s: %s", slide.path, record["reason"])

    # 3. pixels: read the kept patches in row-major order into the packed store
    _write_store(store, list(zip(table["x"].tolist(), table["y"].tolist(), strict=True)), cfg, record, slide,
                 size=size, fill=fill, threads=threads)
    record["n_patches"] = len(table)
    _write_table(tiles, table, cfg, record)
    qc = _render_qc(_composite(thumb_rgba, fill), tissue, thumb_ds, table, record)
    _save_png(qc, thumbnail)


def _composite(rgba: np.ndarray, fill: tuple[int, int, int] | None) -> np.ndarray:
    if fill is None:
        # Before the background is known, transparent pixels are shown as their own (black) RGB;
        # tissue detection ignores them through the alpha mask anyway.
        return np.ascontiguousarray(rgba[..., :3])
    return composite(rgba, fill)


def _store_attrs(cfg: TilingConfig, record: dict) -> dict:
    attrs = {"slide_id": record["slide_id"], "level": cfg.level, "status": record["status"],
             "compression": cfg.store_compression}
    for key in ("mpp", "size_level0", "downsample"):
        if record.get(key) is not None:
            attrs[key] = record[key]
    return attrs


def _write_store(path, coords: list[tuple[int, int]], cfg: TilingConfig, record: dict, slide: Slide | None, *,
                 size: int | None = None, fill=(0, 0, 0), threads: int = 1) -> None:
    size = size or cfg.patch_size
    with atomic_path(path) as tmp, PatchStoreWriter(tmp, len(coords), size, compression=cfg.store_compression,
                                                    attrs=_store_attrs(cfg, record)) as writer:
        if not coords:
            return

        def read(xy: tuple[int, int]):
            return writer.encode(slide.read_rgb(xy, cfg.level, (size, size), fill))

        bar = progress(total=len(coords), desc=f"tiling {record['slide_id']}", unit="patch")
        # Plain images go through PIL; keep those single-threaded.
        workers = max(1, int(threads)) if slide.kind == "openslide" else 1
        if workers == 1:
            for i, xy in enumerate(coords):
                writer.write_encoded(i, *read(xy), xy)
                bar.update()
        else:
            # A bounded window of in-flight patches keeps memory flat; writes stay in order.
            window = collections.deque()
            with ThreadPoolExecutor(workers, thread_name_prefix="tile") as pool:
                for i, xy in enumerate(coords):
                    window.append((i, xy, pool.submit(read, xy)))
                    if len(window) >= 4 * workers:
                        j, xy_j, fut = window.popleft()
                        writer.write_encoded(j, *fut.result(), xy_j)
                        bar.update()
                while window:
                    j, xy_j, fut = window.popleft()
                    writer.write_encoded(j, *fut.result(), xy_j)
                    bar.update()
        bar.close()


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({
        "slide_id": pd.Series([], dtype=str), "patch_index": np.zeros(0, np.int64), "x": np.zeros(0, np.int64),
        "y": np.zeros(0, np.int64), "level": np.zeros(0, np.int64), "size": np.zeros(0, np.int64),
        "size_level0": np.zeros(0, np.int64), "tissue_fraction": np.zeros(0, np.float64),
        "label": pd.Series([], dtype=str),
    })


def _write_table(path, table: pd.DataFrame, cfg: TilingConfig, record: dict) -> None:
    import json

    from duvflow.core.provenance import code_version

    write_parquet(table[list(TABLE_COLUMNS)], path, metadata={
        "duvflow_version": code_version(), "status": record["status"], "slide_path": record["path"],
        "tiling_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)})


# ------------------------------------------------------------------------------------------ QC images


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _render_qc(rgb: np.ndarray, tissue: TissueMask, thumb_ds: float, table: pd.DataFrame, record: dict):
    """Thumbnail with the tissue mask (green tint, yellow outline) and kept patches (cyan boxes)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    h, w = tissue.mask.shape
    q = min(1.0, _QC_MAX / max(h, w))
    qw, qh = max(1, round(w * q)), max(1, round(h * q))
    base = Image.fromarray(rgb)
    base = base.resize((qw, qh), Image.Resampling.BOX) if q < 1 else base
    mask = Image.fromarray(tissue.mask.astype(np.uint8) * 255).resize((qw, qh), Image.Resampling.BOX)
    m = np.asarray(mask) >= 128
    img = np.asarray(base).astype(np.float32)
    img[m] = img[m] * 0.7 + np.array([0, 255, 0], np.float32) * 0.3
    outline = m & ~ndimage.binary_erosion(m, np.ones((3, 3), bool), border_value=1)
    img[outline] = (255, 230, 0)
    out = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    s = q / thumb_ds  # QC pixels per level-0 pixel
    for x, y, e in zip(table["x"].to_numpy(), table["y"].to_numpy(), table["size_level0"].to_numpy(), strict=True):
        draw.rectangle([x * s, y * s, (x + e) * s - 1, (y + e) * s - 1], outline=(0, 200, 255))

    mpp = f"{record['mpp']:.4g} um/px ({record['mpp_source']})" if record["mpp"] else "no MPP"
    area = (f"{record['tissue_area_mm2']:.2f} mm2" if record["tissue_area_mm2"] is not None
            else f"{record['tissue_area_px']:.3g} px")
    lines = [(f"{record['slide_id']} ({record['label']}): {record['status']}, {record['n_patches']} patches "
             f"of {record['patch_size']} px at level {record['level']}"),
             f"background {record['background']} (asked: {record['background_requested']}), tissue {area}, {mpp}",
             "green: tissue mask, yellow: outline, cyan: kept patches"]
    if record["reason"]:
        lines.insert(1, record["reason"])
    return _with_header(out, lines)


def _with_header(img, lines: list[str]):
    from PIL import Image, ImageDraw

    font = _font(14)
    width = max(img.width, 640)
    line_h = 18
    header = 8 + line_h * len(lines)
    canvas = Image.new("RGB", (width, img.height + header), (32, 32, 32))
    canvas.paste(img, (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * line_h), line, fill=(255, 255, 255), font=font)
    return canvas


def _render_message(slide_id: str, label: str, title: str, text: str):
    """A QC image that says why there is no thumbnail (the slide could not be read)."""
    from PIL import Image, ImageDraw

    body = [f"{slide_id} ({label}): {title}"]
    for para in text.splitlines():
        body.extend(textwrap.wrap(para, 90) or [""])
    img = Image.new("RGB", (800, max(200, 30 + 20 * len(body))), (60, 20, 20))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(body):
        draw.text((10, 10 + i * 20), line, fill=(255, 220, 220), font=_font(15 if i == 0 else 13))
    return img


def _save_png(img, path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=3)
