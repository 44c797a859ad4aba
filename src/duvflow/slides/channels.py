"""Multi-channel fluorescence TIFFs (QPTIFF, OME-TIFF): every channel read, shown as a pseudo-colour RGB.

A multiplex fluorescence image stores one grayscale page per channel (DAPI, markers,
autofluorescence); OpenSlide would show only the first. Here all channels are decoded with
tifffile, each is stretched linearly from its own 0.1th to 99.9th percentile (channels differ in
brightness by orders of magnitude, and a dim nuclear stain must stay visible; a nearly empty channel
is stretched no further than until its noise sigma spans 1/64 of the range, so its noise does not
drown the others), and the stretched
channels are mixed additively into an 8-bit RGB composite: channel ``i`` in colour
``channel_colours[i]`` (``tiling.channel_colours``; the colours are reused when there are more
channels than colours, with a note). Tissue detection then sees the composite's brightest colour
channel, to which every channel contributes, and patches are cut from the composite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from duvflow.slides.errors import SlideReadError
from duvflow.slides.images import TiffInfo, check_fits_in_memory

__all__ = ["DEFAULT_CHANNEL_COLOURS", "composite_channels", "parse_colour", "read_channels"]

_log = logging.getLogger(__name__)

# A channel's pixel noise (sigma) spans at most 1/NOISE_SPAN of its stretched range.
NOISE_SPAN = 64.0
# Channel 0 (usually the nuclear stain, DAPI/Hoechst) blue, then the usual fluorescence palette.
DEFAULT_CHANNEL_COLOURS = ("#0000ff", "#00ff00", "#ff0000", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#ffffff")


def parse_colour(colour: str) -> tuple[float, float, float]:
    """``#rrggbb`` -> RGB weights in [0, 1]."""
    c = colour.strip().lstrip("#")
    if len(c) != 6:
        raise ValueError(f"channel colour {colour!r} is not of the form #rrggbb")
    return tuple(int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def composite_channels(channels: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """(C, h, w) channels of any dtype -> uint8 (h, w, 3): each channel percentile-stretched, mixed additively."""
    n, h, w = channels.shape
    weights = np.array([parse_colour(colours[i % len(colours)]) for i in range(n)], np.float32)  # (C, 3)
    step = max(1, int(np.sqrt(h * w / 1e6)))  # ~1 M samples per channel are plenty for two percentiles
    ranges = []
    for c in range(n):
        rows = channels[c, ::step].astype(np.float32)  # whole rows: neighbours for the noise estimate
        sample = rows[:, ::step][np.isfinite(rows[:, ::step])]
        lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9])) if sample.size else (0.0, 1.0)
        diff = np.abs(np.diff(rows, axis=1))
        noise = float(1.4826 * np.median(diff[np.isfinite(diff)]) / np.sqrt(2.0)) if diff.size else 0.0
        # a nearly empty channel is not stretched until its noise fills the range
        hi = max(hi, lo + NOISE_SPAN * noise, lo + 1.0)
        ranges.append((lo, hi))
    out = np.empty((h, w, 3), np.uint8)
    for r0 in range(0, h, 1024):  # in row blocks: no full-size float temporaries
        acc = np.zeros((min(h, r0 + 1024) - r0, w, 3), np.float32)
        for c, (lo, hi) in enumerate(ranges):
            block = np.nan_to_num(channels[c, r0:r0 + 1024].astype(np.float32), nan=lo)
            acc += np.clip((block - lo) / (hi - lo), 0, 1)[..., None] * weights[c]
        out[r0:r0 + 1024] = np.clip(np.rint(acc * 255.0), 0, 255)
    return out


def read_channels(path: Path, tiff: TiffInfo, colours: Sequence[str], notes: list[str]):
    """A multi-channel TIFF as (8-bit RGB PIL image of the composite, resolution properties)."""
    import tifffile
    from PIL import Image

    if not colours:
        raise SlideReadError(path, "has several channels but tiling.channel_colours is empty")
    itemsize = np.dtype(tiff.dtype).itemsize
    # the channels, the float accumulator of one block and the RGB composite
    check_fits_in_memory(path, tiff.width, tiff.height, bytes_per_pixel=tiff.channels * itemsize + 8)
    try:
        if tiff.channel_series:
            pixels = np.stack([tifffile.imread(path, series=i, level=0) for i in tiff.channel_series])
        else:
            pixels = tifffile.imread(path, series=0, level=0)
    except Exception as err:  # any decoder failure means a bad file
        raise SlideReadError(path, f"channel data cannot be decoded: {err}") from err
    if pixels.ndim != 3 or pixels.shape[0] != tiff.channels:
        raise SlideReadError(path, f"has channel array shape {pixels.shape}: expected ({tiff.channels}, h, w)")
    try:
        rgb = composite_channels(pixels, colours)
    except ValueError as err:
        raise SlideReadError(path, str(err)) from err
    mapping = ", ".join(f"{i}:{colours[i % len(colours)]}" for i in range(tiff.channels))
    notes.append(f"{tiff.channels} {np.dtype(tiff.dtype).name} channels shown as a pseudo-colour composite ({mapping})")
    if tiff.channels > len(colours):
        notes.append(f"{tiff.channels} channels but {len(colours)} channel_colours: colours reused")
    _log.info("%s: %d channels read (%s), composited as %s", path, tiff.channels, np.dtype(tiff.dtype).name, mapping)
    return Image.fromarray(rgb), tiff.resolution
