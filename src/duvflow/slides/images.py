"""Images the reader decodes whole: plain PIL images, >8-bit TIFFs, and the memory they need.

OpenSlide reads whole-slide formats region by region; everything else (PNG, JPEG, stripped TIFF,
16-bit and float camera images) is decoded whole here and handed to OpenSlide's ``ImageSlide``.
16-bit and float pixels are rescaled to 8 bits (:func:`rescale_to_uint8`). Before decoding,
:func:`check_fits_in_memory` compares the decoded size with what the process may still allocate
(:func:`available_memory`, cgroup-aware) and refuses, with the remedy, what would not fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from duvflow.slides.errors import SlideReadError

__all__ = ["TiffInfo", "available_memory", "check_fits_in_memory", "deep_tiff_as_image", "read_high_depth",
           "read_plain_image", "rescale_to_uint8", "tiff_info"]

_log = logging.getLogger(__name__)

# Plain-image pixel modes that convert losslessly (or as intended) to 8-bit RGB(A).
_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# Modes PIL opens with more than 8 bits per sample: rescaled (see rescale_to_uint8).
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def deep_tiff_as_image(path: Path, osr, tiff: TiffInfo, notes: list[str]):
    """(OpenSlide handle or None, kind) for a >8-bit TIFF that OpenSlide opened as generic-tiff.

    OpenSlide keeps only the high byte of 16-bit samples, so 12-bit camera data comes out nearly
    black. Such a TIFF is read as a plain image instead (rescaled; see :func:`rescale_to_uint8`)
    when it fits in memory; otherwise OpenSlide reads it, with a note in the QC record.
    """
    try:
        check_fits_in_memory(path, tiff.width, tiff.height, bytes_per_pixel=16)
    except SlideReadError as err:
        name = tiff.dtype.__name__
        notes.append(f"{name} samples read by OpenSlide as their high 8 bits (too large to rescale)")
        _log.warning("%s: OpenSlide reads the high 8 bits of its %s samples; dim images lose contrast (%s)",
                     path, name, err.reason)
        return osr, "openslide"
    osr.close()
    return None, "image"


def read_plain_image(path: Path, tiff: TiffInfo | None, notes: list[str]):
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
    check_fits_in_memory(path, width, height, bytes_per_pixel=16 if high_depth else 8)
    if high_depth:
        pixels = read_high_depth(path, image, tiff=tiff is not None)
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


def check_fits_in_memory(path: Path, width: int, height: int, bytes_per_pixel: int) -> None:
    need = width * height * bytes_per_pixel  # decoded pixels, the 8-bit RGB(A) copy, a little headroom
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise SlideReadError(path, f"is a {width}x{height} image that has to be decoded whole: "
                                   f"about {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB available. "
                                   "Convert it to a tiled pyramidal TIFF, which is read region by region, e.g. "
                                   "`vips tiffsave in.tif out.tif --tile --pyramid --compression deflate`")


@dataclasses.dataclass(frozen=True)
class TiffInfo:
    """What the header of a TIFF's first image says, read once per slide."""

    dtype: type  # numpy sample type
    width: int
    height: int
    resolution: dict[str, str]  # tiff.ResolutionUnit / XResolution / YResolution, as OpenSlide names them
    # Grayscale channels of one image: either series 0 is a (channels, h, w) stack (QPTIFF,
    # OME-TIFF) or the first series are same-shaped grayscale pages (channel_series lists them).
    channels: int = 1
    channel_series: tuple[int, ...] = ()


def tiff_info(path: Path) -> TiffInfo | None:
    """The first image's header of a TIFF; None for other files."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            unit = _RESOLUTION_UNITS.get(int(tags["ResolutionUnit"].value)) if "ResolutionUnit" in tags else None
            x, y = (tags[k].value if k in tags else None for k in ("XResolution", "YResolution"))
            dtype, width, height = page.dtype.type, int(page.imagewidth), int(page.imagelength)
            channels, channel_series = _grayscale_channels(tif)
    except Exception:  # noqa: BLE001 - not a TIFF, or one tifffile cannot parse: PIL decides
        return None
    resolution = {}
    if unit is not None and x is not None:
        res = [v[0] / v[1] if isinstance(v, tuple) and v[1] else v for v in (x, y or x)]
        resolution = {"tiff.ResolutionUnit": unit, "tiff.XResolution": str(res[0]), "tiff.YResolution": str(res[1])}
    return TiffInfo(dtype, width, height, resolution, channels, channel_series)


def _grayscale_channels(tif) -> tuple[int, tuple[int, ...]]:
    """(number of grayscale channels, series holding one channel each) of an open TIFF."""
    first = tif.series[0]
    if len(first.shape) == 3 and "S" not in first.axes and first.pages[0].samplesperpixel == 1:
        # (channels, h, w); a 3- or 4-plane stack without channel metadata (OME, QPTIFF) stays planar RGB(A)
        if first.kind in ("shaped", "generic", "uniform") and first.shape[0] in (3, 4):
            return 1, ()
        return int(first.shape[0]), ()
    if len(first.shape) != 2:
        return 1, ()
    same = []
    for i, series in enumerate(tif.series):  # QPTIFF-like: one series per channel, then RGB thumbnails
        if series.shape != first.shape or series.dtype != first.dtype:
            break
        same.append(i)
    return (len(same), tuple(same)) if len(same) > 1 else (1, ())


def read_high_depth(path: Path, image, *, tiff: bool) -> np.ndarray:
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
