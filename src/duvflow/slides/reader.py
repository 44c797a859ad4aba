"""Opening slides: OpenSlide for whole-slide formats, its PIL fallback for plain images.

:func:`open_slide` returns a :class:`Slide` that reads RGB regions (transparent pixels composited
onto a fill colour), builds low-resolution thumbnails strip by strip (never level 0 whole) and
knows the slide's microns per pixel when the file says so. Every failure to open or read a file
becomes a :class:`SlideReadError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

__all__ = ["MissingMPPError", "Slide", "SlideReadError", "available_memory", "composite", "open_slide",
           "rescale_to_uint8"]

_log = logging.getLogger(__name__)

# Plain-image pixel modes that convert losslessly (or as intended) to 8-bit RGB(A).
_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# Modes PIL opens with more than 8 bits per sample: rescaled (see rescale_to_uint8).
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
# Resolution tags outside this range are placeholders (72 dpi, "1 pixel per unit"), not a microscope.
_MPP_RANGE = (0.01, 100.0)
_TIFF_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}
# Bytes of RGBA read at once while building a thumbnail.
_STRIP_BYTES = 64 << 20


class SlideReadError(RuntimeError):
    """A slide cannot be used: unreadable, corrupt, unsupported, or not as the config needs it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"slide {self.path}: {reason}")


class MissingMPPError(SlideReadError):
    """A size in microns was asked for, but the slide has no microns-per-pixel metadata."""


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


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a whole-slide image (any OpenSlide format) or a plain image (PNG, JPEG, stripped TIFF).

    Plain images are decoded whole (memory permitting); 16-bit and float ones are rescaled to
    8 bits (see :func:`rescale_to_uint8`).
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideReadError(path, "file does not exist")
    if not path.is_file():
        raise SlideReadError(path, "is not a file")
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
    tiff = _tiff_info(path) if osr is None or generic_tiff else None
    if generic_tiff and tiff is not None and tiff.dtype != np.uint8:
        osr, kind = _deep_tiff_as_image(path, osr, tiff, notes)
    if osr is None:
        image, properties = _read_plain_image(path, tiff, notes)
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


def _deep_tiff_as_image(path: Path, osr, tiff: _TiffInfo, notes: list[str]):
    """(OpenSlide handle or None, kind) for a >8-bit TIFF that OpenSlide opened as generic-tiff.

    OpenSlide keeps only the high byte of 16-bit samples, so 12-bit camera data comes out nearly
    black. Such a TIFF is read as a plain image instead (rescaled; see :func:`rescale_to_uint8`)
    when it fits in memory; otherwise OpenSlide reads it, with a note in the QC record.
    """
    try:
        _check_fits_in_memory(path, tiff.width, tiff.height, bytes_per_pixel=16)
    except SlideReadError as err:
        name = tiff.dtype.__name__
        notes.append(f"{name} samples read by OpenSlide as their high 8 bits (too large to rescale)")
        _log.warning("%s: OpenSlide reads the high 8 bits of its %s samples; dim images lose contrast (%s)",
                     path, name, err.reason)
        return osr, "openslide"
    osr.close()
    return None, "image"


def _read_plain_image(path: Path, tiff: _TiffInfo | None, notes: list[str]):
    """A plain image file as (8-bit RGB(A) PIL image, resolution properties), or a
    :class:`SlideReadError` saying why not.

    What was done to the pixels on the way (rescaling) is appended to ``notes``. The properties
    use OpenSlide's TIFF names (``tiff.XResolution``, ...), also for PNG/JPEG density.
    """
    from PIL import Image, UnidentifiedImageError

    image = None
    try:
        # PIL's decompression-bomb guard (~179 M pixels) would refuse ordinary large scans; the
        # memory check below replaces it. PIL also warns about garbage it then rejects anyway.
        with _no_pixel_limit(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if tiff is None:  # a TIFF PIL cannot open (e.g. float RGB) is left to tifffile
            reason = ("neither OpenSlide nor PIL recognises the file format (not a slide or image, or corrupt)"
                      if isinstance(err, UnidentifiedImageError) else f"cannot be opened as an image: {err}")
            raise SlideReadError(path, reason) from err
    high_depth = (tiff is not None and tiff.dtype != np.uint8) or (image is not None and image.mode in _HIGH_DEPTH_MODES)
    if image is None and not high_depth:
        raise SlideReadError(path, f"is a TIFF of {tiff.dtype.__name__} samples that neither OpenSlide nor PIL can decode")
    if image is not None and image.mode not in _CONVERTIBLE_MODES and not high_depth:
        raise SlideReadError(path, f"unsupported pixel mode {image.mode!r}; convert it to 8-bit RGB")
    properties = tiff.resolution if tiff is not None else _density_properties(image)
    width, height = (image.width, image.height) if image is not None else (tiff.width, tiff.height)
    _check_fits_in_memory(path, width, height, bytes_per_pixel=16 if high_depth else 8)
    if high_depth:
        pixels = _read_high_depth(path, image, tiff=tiff is not None)
        notes.append(f"{pixels.dtype} pixels rescaled to 8 bits")
        return Image.fromarray(rescale_to_uint8(pixels, path)), properties
    try:
        image.load()  # a plain image is decoded whole anyway; fail now if it is truncated
    except (OSError, ValueError, SyntaxError) as err:
        raise SlideReadError(path, f"image data is corrupt or truncated: {err}") from err
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = image.mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return image, properties


# TIFF ResolutionUnit codes (2, 3 standard; 4, 5 as tifffile writes them) -> OpenSlide's names
_RESOLUTION_UNITS = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}


def _density_properties(image) -> dict[str, str]:
    """A PNG/JPEG's pixel density (PIL's ``dpi``: PNG pHYs, JPEG JFIF) under OpenSlide's TIFF names."""
    dpi = image.info.get("dpi") if image is not None else None
    if not dpi:
        return {}
    return {"tiff.ResolutionUnit": "inch", "tiff.XResolution": str(dpi[0]), "tiff.YResolution": str(dpi[1])}


@contextlib.contextmanager
def _no_pixel_limit():
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def available_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the machine's available memory and
    the room left under a cgroup (v2) limit, as SLURM and containers set; None when unknown."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _check_fits_in_memory(path: Path, width: int, height: int, bytes_per_pixel: int) -> None:
    need = width * height * bytes_per_pixel  # decoded pixels, the 8-bit RGB(A) copy, a little headroom
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise SlideReadError(path, f"is a {width}x{height} image that has to be decoded whole: "
                                   f"about {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB available. "
                                   "Convert it to a tiled pyramidal TIFF, which is read region by region, e.g. "
                                   "`vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`")


@dataclasses.dataclass(frozen=True)
class _TiffInfo:
    """What the header of a TIFF's first image says, read once per slide."""

    dtype: type  # numpy sample type
    width: int
    height: int
    resolution: dict[str, str]  # tiff.ResolutionUnit / XResolution / YResolution, as OpenSlide names them


def _tiff_info(path: Path) -> _TiffInfo | None:
    """The first image's header of a TIFF; None for other files."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            unit = _RESOLUTION_UNITS.get(int(tags["ResolutionUnit"].value)) if "ResolutionUnit" in tags else None
            x, y = (tags[k].value if k in tags else None for k in ("XResolution", "YResolution"))
            dtype, width, height = page.dtype.type, int(page.imagewidth), int(page.imagelength)
    except Exception:  # noqa: BLE001 - not a TIFF, or one tifffile cannot parse: PIL decides
        return None
    resolution = {}
    if unit is not None and x is not None:
        res = [v[0] / v[1] if isinstance(v, tuple) and v[1] else v for v in (x, y or x)]
        resolution = {"tiff.ResolutionUnit": unit, "tiff.XResolution": str(res[0]), "tiff.YResolution": str(res[1])}
    return _TiffInfo(dtype, width, height, resolution)


def _read_high_depth(path: Path, image, *, tiff: bool) -> np.ndarray:
    """Pixels of a 16-bit/float image as (h, w[, c]): TIFFs via tifffile (all samples), others via PIL."""
    import tifffile

    try:
        if tiff:
            pixels = tifffile.imread(path, series=0, level=0)
        else:
            pixels = np.asarray(image)
    except Exception as err:  # any decoder failure means a bad file
        raise SlideReadError(path, f"image data cannot be decoded: {err}") from err
    pixels = np.squeeze(pixels)
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[-1] not in (3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # planar (samples, h, w) -> (h, w, samples)
    if pixels.ndim == 3 and pixels.shape[-1] == 2:
        pixels = pixels[..., :1]  # grey + alpha: the grey
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (1, 3, 4))):
        raise SlideReadError(path, f"has pixel array shape {pixels.shape}: expected grey, RGB or RGBA "
                                   "(one image, 1, 3 or 4 samples per pixel)")
    return pixels


def rescale_to_uint8(pixels: np.ndarray, path: str | os.PathLike = "image") -> np.ndarray:
    """16-bit / float pixels -> 8-bit RGB(A), linearly from the 0.1th to the 99.9th percentile.

    One range for all colour channels keeps the colour balance; the percentiles (from a
    subsample) ignore hot pixels and empty borders, so 12-bit camera data in 16-bit containers
    and float exports both fill the 8-bit range. An alpha channel is kept only as opaque/not.
    """
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    alpha = None
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        alpha = np.where(pixels[..., 3] > 0, 255, 0).astype(np.uint8)
        pixels = pixels[..., :3]
    step = max(1, int(np.sqrt(pixels.size / 4e6)))  # ~4 M samples are plenty for two percentiles
    sample = pixels[::step, ::step].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise SlideReadError(path, "holds no finite pixel values")
    lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    if hi <= lo:
        hi = lo + 1.0
    out = np.empty(pixels.shape, np.uint8)
    for r0 in range(0, pixels.shape[0], 2048):  # in row blocks: no full-size float temporaries
        block = np.nan_to_num(pixels[r0:r0 + 2048].astype(np.float32), nan=lo, posinf=hi, neginf=lo)
        out[r0:r0 + 2048] = np.clip(np.rint((block - lo) * (255.0 / (hi - lo))), 0, 255)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    if alpha is not None:
        out = np.concatenate([out, alpha[..., None]], axis=-1)
    _log.warning("%s: %s pixels rescaled to 8 bits, linearly from %.4g (0.1th percentile) to %.4g (99.9th)",
                 path, pixels.dtype, lo, hi)
    return out


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
