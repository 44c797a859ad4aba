"""Opening slides: OpenSlide for whole-slide formats, its PIL fallback for plain images.

:func:`open_slide` returns a :class:`Slide` that reads RGB regions (transparent pixels composited
onto a fill colour), builds low-resolution thumbnails strip by strip (never level 0 whole) and
knows the slide's microns per pixel when the file says so. Every failure to open or read a file
becomes a :class:`SlideReadError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

from duvflow.slides.channels import DEFAULT_CHANNEL_COLOURS, read_channels
from duvflow.slides.errors import MissingMPPError, SlideReadError
from duvflow.slides.images import (
    available_memory,
    deep_tiff_as_image,
    read_plain_image,
    rescale_to_uint8,
    tiff_info,
)

__all__ = ["MissingMPPError", "Slide", "SlideReadError", "available_memory", "composite", "open_slide",
           "rescale_to_uint8"]

_log = logging.getLogger(__name__)

# Resolution tags outside this range are placeholders (72 dpi, "1 pixel per unit"), not a microscope.
_MPP_RANGE = (0.01, 100.0)
_TIFF_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}
# Bytes of RGBA read at once while building a thumbnail.
_STRIP_BYTES = 64 << 20


def composite(rgba: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """RGB of an RGBA array laid over a solid ``fill`` colour (straight, not premultiplied alpha)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + np.asarray(fill, np.float32) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Slide:
    """An open slide (use as a context manager). Coordinates are level-0 pixels unless noted."""

    def __init__(self, path: str | os.PathLike, osr, *, kind: str, notes: Sequence[str] = (),
                 properties: dict[str, str] | None = None):
        self.path = Path(path)
        self._osr = osr
        self.kind = kind  # "openslide" (a whole-slide format) or "image" (plain image via PIL)
        self.notes = list(notes)  # how the pixels were adapted on opening, for the QC record
        # a plain image's own metadata (resolution) joins what OpenSlide reports
        props = {**(properties or {}), **dict(osr.properties)}
        self.properties = props
        self.vendor = props.get("openslide.vendor", "image")
        self.level_count = int(osr.level_count)
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.dimensions = self.level_dimensions[0]
        self.mpp_xy, self.mpp_source = _mpp_from_properties(props, self.path)
        bg = props.get("openslide.background-color")
        self.background_color: tuple[int, int, int] | None = (
            tuple(int(bg[i:i + 2], 16) for i in (0, 2, 4)) if bg and len(bg) == 6 else None)

    @property
    def mpp(self) -> float | None:
        """Mean microns per level-0 pixel, or ``None`` when the file does not say."""
        return None if self.mpp_xy is None else (self.mpp_xy[0] + self.mpp_xy[1]) / 2

    def check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise SlideReadError(self.path, f"has {self.level_count} level(s) (0..{self.level_count - 1}); "
                                            f"level {level} does not exist")

    def read_rgba(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """The region as a PIL RGBA image (straight alpha; pixels outside the slide are transparent)."""
        import openslide

        try:
            return self._osr.read_region((int(location[0]), int(location[1])), int(level),
                                         (int(size[0]), int(size[1])))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            raise SlideReadError(self.path, f"reading {size[0]}x{size[1]} px at {tuple(location)} "
                                            f"(level {level}) failed: {err}") from err

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int],
                 fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """The region as uint8 (h, w, 3); transparent pixels are composited onto ``fill``."""
        img = self.read_rgba(location, level, size)
        alpha_min = img.getchannel("A").getextrema()[0]
        if alpha_min == 255:
            return np.asarray(img.convert("RGB"))
        return composite(np.asarray(img), fill)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """A low-resolution RGBA image of the whole slide, longest edge <= ``max_size``.

        Built from the coarsest level that is still at least as fine as the target, read in
        horizontal strips and box-filtered, so memory stays bounded whatever the slide size.
        Returns the (h, w, 4) array and the level-0 pixels per thumbnail pixel.
        """
        from PIL import Image

        w0, h0 = self.dimensions
        factor = max(1.0, max(w0, h0) / max_size)
        tw, th = max(1, round(w0 / factor)), max(1, round(h0 / factor))
        level = int(self._osr.get_best_level_for_downsample(factor))
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        # thumbnail row r covers level rows [r * fy, (r + 1) * fy)
        fy = lh / th
        rows_per_strip = max(1, int(_STRIP_BYTES / (4 * lw * max(fy, 1.0))))
        out = np.empty((th, tw, 4), np.uint8)
        for r0 in range(0, th, rows_per_strip):
            r1 = min(th, r0 + rows_per_strip)
            y_lo, y_hi = r0 * fy, r1 * fy
            ys, ye = math.floor(y_lo), min(lh, math.ceil(y_hi))
            strip = self.read_rgba((0, round(ys * ds)), level, (lw, ye - ys))
            if (tw, r1 - r0) != strip.size or y_lo != ys:
                strip = strip.resize((tw, r1 - r0), Image.Resampling.BOX,
                                     box=(0.0, y_lo - ys, float(lw), min(y_hi, lh) - ys))
            out[r0:r1] = np.asarray(strip)
        return out, w0 / tw

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({str(self.path)!r}, vendor={self.vendor}, levels={self.level_dimensions}, "
                f"mpp={self.mpp_xy})")


def open_slide(path: str | os.PathLike, channel_colours: Sequence[str] = DEFAULT_CHANNEL_COLOURS) -> Slide:
    """Open a whole-slide image (any OpenSlide format) or a plain image (PNG, JPEG, stripped TIFF).

    Plain images are decoded whole (memory permitting); 16-bit and float ones are rescaled to
    8 bits (see :func:`~duvflow.slides.images.rescale_to_uint8`). A TIFF with one grayscale page
    per channel (QPTIFF, OME-TIFF, multiplex fluorescence) is read with all its channels and
    shown as a pseudo-colour composite, channel ``i`` in ``channel_colours[i]`` (see
    :mod:`duvflow.slides.channels`).
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideReadError(path, "file does not exist")
    if not path.is_file():
        raise SlideReadError(path, "is not a file")
    if path.stat().st_size == 0:
        raise SlideReadError(path, "the file is empty (0 bytes)")
    try:
        osr = openslide.OpenSlide(path)
        kind = "openslide"
    except openslide.OpenSlideUnsupportedFormatError:
        osr, kind = None, "image"
    except openslide.OpenSlideError as err:
        raise SlideReadError(path, f"OpenSlide cannot open it: {err}") from err
    notes: list[str] = []
    properties: dict[str, str] = {}
    generic_tiff = osr is not None and osr.properties.get("openslide.vendor") == "generic-tiff"
    tiff = tiff_info(path) if osr is None or generic_tiff else None
    if tiff is not None and tiff.channels > 1:  # OpenSlide would show the first channel only
        if osr is not None:
            osr.close()
        image, properties = read_channels(path, tiff, channel_colours, notes)
        osr, kind = openslide.ImageSlide(image), "image"
    if generic_tiff and kind == "openslide" and tiff is not None and tiff.dtype != np.uint8:
        osr, kind = deep_tiff_as_image(path, osr, tiff, notes)
    if osr is None:
        image, properties = read_plain_image(path, tiff, notes)
        osr = openslide.ImageSlide(image)
    slide = Slide(path, osr, kind=kind, notes=notes, properties=properties)
    if min(slide.dimensions) < 1:
        slide.close()
        raise SlideReadError(path, f"has empty dimensions {slide.dimensions}")
    # Decode one pixel of the first and last level now: a corrupt file fails here, with its name.
    try:
        for level in {0, slide.level_count - 1}:
            slide.read_rgba((0, 0), level, (1, 1))
    except SlideReadError:
        slide.close()
        raise
    _log.info("opened %s: %s, %d level(s) %s, mpp %s (%s)", path, slide.vendor, slide.level_count,
              slide.level_dimensions, slide.mpp_xy, slide.mpp_source)
    return slide


def _mpp_from_properties(props: dict[str, str], path: Path) -> tuple[tuple[float, float] | None, str | None]:
    """Microns per pixel from OpenSlide's standard properties, else from TIFF resolution tags."""
    mpp = _pair(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
    source = "openslide.mpp"
    if mpp is None:
        unit = props.get("tiff.ResolutionUnit", "").lower()
        res = _pair(props.get("tiff.XResolution"), props.get("tiff.YResolution"))
        if unit in _TIFF_UNIT_UM and res is not None:
            mpp = (_TIFF_UNIT_UM[unit] / res[0], _TIFF_UNIT_UM[unit] / res[1])
            source = f"tiff resolution ({unit})"  # also a PNG/JPEG density, named alike
    if mpp is None:
        return None, None
    lo, hi = _MPP_RANGE
    if not all(lo <= v <= hi for v in mpp):
        _log.warning("%s: ignoring implausible microns per pixel %s from %s", path, mpp, source)
        return None, None
    return mpp, source


def _pair(x: str | None, y: str | None) -> tuple[float, float] | None:
    try:
        fx = float(x) if x not in (None, "") else None
        fy = float(y) if y not in (None, "") else fx
    except ValueError:
        return None
    if fx is None or fy is None or not (fx > 0 and fy > 0) or not (math.isfinite(fx) and math.isfinite(fy)):
        return None
    return fx, fy
