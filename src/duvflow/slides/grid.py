"""The patch grid: where candidate patches lie, how much of each is tissue, and the patch edge in pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duvflow.slides.config import MIN_PATCH_PX, TilingConfig
from duvflow.slides.errors import MissingMPPError, SlideReadError
from duvflow.slides.reader import Slide

__all__ = ["PatchGrid", "patch_grid", "resolve_patch_size", "tissue_fractions"]


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
    if size < MIN_PATCH_PX:
        raise SlideReadError(slide.path, f"tiling.patch_um={cfg.patch_um} is only {size} px at level {cfg.level} "
                                         f"(mpp {mpp[0]:.4g}); use a larger patch_um or a finer level")
    return size, mpp, source
