"""Tissue detection on a low-resolution thumbnail, from absolute evidence of what background looks like.

Two kinds of slide, two kinds of background:

- ``bright`` (bright-field, H&E, IHC): glass is bright and unstained. A glass pixel's darkest
  channel is >= ``GLASS_MIN`` (it transmits most of the light) and its HSV saturation is
  <= ``GLASS_MAX_SATURATION`` (the grayspace/saturation cut-offs slideflow and CLAM use), and it
  is flat (local standard deviation <= ``FLAT_STD``: pale stroma has fibres and nuclei, glass
  has none). The tissue signal is how much darker than the glass a pixel is in its darkest
  channel, after white-balancing to the measured glass colour.
- ``dark`` (fluorescence, DUV, multiplex): the background is dark (brightest channel
  <= ``DARK_MAX``) and flat, and its noise floor is measured. The tissue signal is the brightest
  channel (fluorescence in any colour counts).

When background is present (>= ``MIN_BACKGROUND`` of the slide), a pixel is background when its
(3 x 3 mean) signal stays within the noise floor of the background (median + max(``NOISE_K``
sigmas of that mean, ``MIN_CONTRAST``); sigma from neighbouring background pixels' differences,
so a gradient is not noise) *and* it is locally flat; everything else is tissue, so dim fluorescence and
pale stain count as soon as they rise above the noise or show texture. When no background is
present the frame is all tissue (a TMA core or an excerpt that tissue fills): nothing is split
into two classes. A frame whose signal hardly varies at all (spread < ``min_separation``) is
empty, whatever the mode.

``auto`` chooses the mode from the same evidence: glass and no dark background -> ``bright``;
dark background and no glass -> ``dark``; both -> the larger; neither (tissue fills the frame) ->
``bright`` when most pixels are bright (median brightest channel >= 128: transmitted light), else
``dark`` (emitted light is dim). The border is never assumed to be background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BACKGROUNDS", "BackgroundEvidence", "TissueMask", "background_evidence", "choose_background",
           "detect_tissue", "otsu_threshold", "pen_marks", "tissue_signal"]

_log = logging.getLogger(__name__)

BACKGROUNDS = ("auto", "dark", "bright")
GLASS_MIN = 200  # darkest channel of bright-field glass (0..255)
GLASS_MAX_SATURATION = 0.08  # HSV saturation of glass: grey, unstained
DARK_MAX = 40  # brightest channel of a fluorescence background (0..255)
FLAT_STD = 4.0  # local (5 x 5) standard deviation of a background pixel's luminance
MIN_BACKGROUND = 0.01  # fraction of the slide that must show background for a background class to exist
NOISE_K = 6.0  # background noise sigmas a tissue pixel rises above the background
MIN_CONTRAST = {"bright": 12.0, "dark": 4.0}  # smallest signal step that counts as tissue (0..255)
# Background lies within this of the darkest (fluorescence) / brightest (glass) level of the slide;
# wide enough for uneven glass (scanned vs unscanned areas) and a background gradient.
EXTREME_BAND = {"bright": 24.0, "dark": 8.0}
_MIN_SAMPLES = 64  # background pixels needed to measure its colour and noise
_MIN_OBJECT_PX = 16  # smallest tissue island / hole kept (a 3 x 3 speck, smoothed, is 9 pixels)


@dataclass(frozen=True)
class BackgroundEvidence:
    """What the thumbnail shows of each kind of background (fractions of the valid pixels)."""

    glass: np.ndarray  # bool (h, w): bright, unsaturated, flat
    dark: np.ndarray  # bool (h, w): dark, flat
    glass_fraction: float
    dark_fraction: float
    median_brightest: float  # median of the brightest channel over the valid pixels

    def found(self, mode: str) -> bool:
        return (self.glass_fraction if mode == "bright" else self.dark_fraction) >= MIN_BACKGROUND


@dataclass(frozen=True)
class TissueMask:
    """Tissue mask at thumbnail resolution and how it was found."""

    mask: np.ndarray  # bool (h, w)
    background: str  # "dark" or "bright" (never "auto": the mode actually used)
    threshold: float  # on the 0..255 tissue-signal scale; signal above it (or texture) is tissue
    separation: float  # median tissue signal minus the background's (or the signal's spread without background)
    background_rgb: tuple[int, int, int]  # median colour of the background (or of the non-tissue pixels)
    background_found: bool = True  # False: no background class, the frame is all tissue (or empty)
    background_method: str = ""  # how the mode was chosen: "requested" or the evidence auto used
    noise: float = 0.0  # robust sigma of the background's pixel noise (tissue-signal scale)
    glass_fraction: float = 0.0
    dark_fraction: float = 0.0
    reference_rgb: tuple[float, float, float] = (255.0, 255.0, 255.0)  # glass colour the bright signal is relative to

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def signal(self, rgb: np.ndarray) -> np.ndarray:
        """The tissue signal of any RGB pixels (e.g. a full-resolution patch), as the mask used it."""
        return tissue_signal(rgb, self.background, self.reference_rgb)

    def background_like(self, rgb: np.ndarray) -> np.ndarray:
        """Pixels of ``rgb`` whose signal lies within the background's noise floor (none without background)."""
        if not self.background_found:
            return np.zeros(rgb.shape[:2], bool)
        return self.signal(rgb) <= self.threshold


def otsu_threshold(values: np.ndarray) -> tuple[float, float, float]:
    """Otsu's threshold of uint8-range ``values`` and the means of the two classes it separates.

    Pixels ``> threshold`` form the upper class.
    """
    v = np.asarray(values).ravel()
    if v.dtype != np.uint8:
        v = np.clip(v, 0, 255).astype(np.uint8)
    hist = np.bincount(v, minlength=256).astype(np.float64)
    if hist.sum() == 0:
        return 0.0, 0.0, 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # pixels <= t
    s0 = np.cumsum(hist * levels)
    total, total_sum = w0[-1], s0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = s0 / w0
        mu1 = (total_sum - s0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1.0
    t = int(np.argmax(between))
    if between[t] <= 0:  # a single grey level: nothing to separate
        m = float(total_sum / total)
        return m, m, m
    return float(t), float(mu0[t]), float(mu1[t])


def tissue_signal(rgb: np.ndarray, background: str,
                  reference: tuple[float, float, float] = (255.0, 255.0, 255.0)) -> np.ndarray:
    """Per-pixel float32 value (0..255) that is high on tissue for the given background mode.

    ``dark``: the brightest channel. ``bright``: 255 minus the darkest channel after scaling each
    channel so that the glass colour ``reference`` becomes white.
    """
    if background == "dark":
        return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    if background == "bright":
        planes = [rgb[..., i].astype(np.float32) for i in range(3)]
        darkest = None
        for plane, ref in zip(planes, reference, strict=True):
            plane *= 255.0 / max(float(ref), 1.0)
            darkest = plane if darkest is None else np.minimum(darkest, plane)
        return 255.0 - np.minimum(darkest, 255.0)
    raise ValueError(f"background must be 'dark' or 'bright', got {background!r}")


class _Pixels:
    """Per-pixel measures of a thumbnail shared by the background evidence and the tissue mask."""

    def __init__(self, rgb: np.ndarray):
        r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
        self.lum = 0.299 * r + 0.587 * g + 0.114 * b
        self.flat = _local_std(self.lum) <= FLAT_STD
        # saturation of single noisy pixels is meaningless: measure it on a 3 x 3 mean
        r, g, b = (ndimage.uniform_filter(c, 3) for c in (r, g, b))
        self.hi = np.maximum(np.maximum(r, g), b)
        self.lo = np.minimum(np.minimum(r, g), b)
        self.saturation = (self.hi - self.lo) / np.maximum(self.hi, 1.0)
        self.green_cyan = (g >= r + 20) & (np.maximum(g, b) >= r + 30)


def _local_std(values: np.ndarray, size: int = 5) -> np.ndarray:
    mean = ndimage.uniform_filter(values, size)
    mean_sq = ndimage.uniform_filter(values * values, size)
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def background_evidence(rgb: np.ndarray, valid: np.ndarray, pixels: _Pixels | None = None) -> BackgroundEvidence:
    """Where the thumbnail shows bright-field glass and where a dark fluorescence background."""
    px = pixels or _Pixels(rgb)
    glass = valid & px.flat & (px.lo >= GLASS_MIN) & (px.saturation <= GLASS_MAX_SATURATION)
    dark = valid & px.flat & (px.hi <= DARK_MAX)
    # Background is the darkest (fluorescence) or brightest (glass) population, not merely dark or
    # bright: dim autofluorescent stroma and pale stroma lie further from the extreme than this.
    if dark.any():
        dark &= px.hi <= float(np.percentile(_subsample(px.hi, valid), 0.5)) + EXTREME_BAND["dark"]
    if glass.any():
        glass &= px.lo >= float(np.percentile(_subsample(px.lo, valid), 99.5)) - EXTREME_BAND["bright"]
    glass = _opening(glass, 3) if glass.any() else glass
    dark = _opening(dark, 3) if dark.any() else dark
    n = max(1, int(valid.sum()))
    brightest = float(np.median(_subsample(px.hi, valid))) if valid.any() else 0.0
    return BackgroundEvidence(glass=glass, dark=dark, glass_fraction=float(glass.sum()) / n,
                              dark_fraction=float(dark.sum()) / n, median_brightest=brightest)


def choose_background(rgb: np.ndarray, valid: np.ndarray | None = None,
                      evidence: BackgroundEvidence | None = None) -> str:
    """``"dark"`` or ``"bright"`` for an RGB thumbnail (see the module docstring)."""
    return _choose(evidence or background_evidence(_as_rgb(rgb), _as_valid(rgb, valid)))[0]


def _choose(ev: BackgroundEvidence) -> tuple[str, str]:
    """(mode, the evidence that decided it)."""
    glass, dark = ev.found("bright"), ev.found("dark")
    if glass and not dark:
        return "bright", f"auto: glass (bright, unsaturated, flat) on {100 * ev.glass_fraction:.1f}% of the slide"
    if dark and not glass:
        return "dark", f"auto: dark flat background on {100 * ev.dark_fraction:.1f}% of the slide"
    if glass and dark:
        mode = "bright" if ev.glass_fraction >= ev.dark_fraction else "dark"
        return mode, (f"auto: both glass ({100 * ev.glass_fraction:.1f}%) and dark background "
                      f"({100 * ev.dark_fraction:.1f}%): the larger")
    mode = "bright" if ev.median_brightest >= 128 else "dark"
    return mode, (f"auto: no background in view; median brightest channel {ev.median_brightest:.0f} "
                  f"({'>=' if mode == 'bright' else '<'} 128: {'transmitted' if mode == 'bright' else 'emitted'} light)")


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB thumbnail, got shape {rgb.shape}")
    return np.asarray(rgb, np.uint8)


def _as_valid(rgb: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    return np.ones(rgb.shape[:2], bool) if valid is None else np.asarray(valid, bool)


def detect_tissue(rgb: np.ndarray, valid: np.ndarray | None = None, background: str = "auto", *,
                  min_separation: float = 20.0, min_object_frac: float = 5e-5) -> TissueMask:
    """Tissue mask of an RGB thumbnail.

    ``valid`` marks pixels that belong to the slide (OpenSlide reports pixels outside the scanned
    area as transparent); they never count as tissue. ``min_separation``: a frame whose tissue
    signal spreads less than this (1st to 99th percentile) is uniform, hence empty. Specks and
    holes smaller than ``min_object_frac`` of the thumbnail (at least 16 pixels) are cleaned away;
    small tissue fragments above that stay.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    rgb = _as_rgb(rgb)
    valid = _as_valid(rgb, valid)
    pixels = _Pixels(rgb)
    ev = background_evidence(rgb, valid, pixels)
    mode, method = _choose(ev) if background == "auto" else (background, "requested")
    found = ev.found(mode)
    bg_pixels = (ev.glass if mode == "bright" else ev.dark) if found else np.zeros(valid.shape, bool)
    if found and bg_pixels.sum() < _MIN_SAMPLES:
        found = False
    reference = (255.0, 255.0, 255.0)
    if found and mode == "bright":
        reference = tuple(float(v) for v in np.median(_subsample(rgb, bg_pixels), axis=0))
    raw = tissue_signal(rgb, mode, reference)
    signal = ndimage.uniform_filter(raw, size=3)  # soften pixel noise
    noise = 0.0
    if found:
        base = float(np.median(_subsample(signal, bg_pixels)))
        noise = _pixel_noise(raw, bg_pixels)
        threshold = base + max(NOISE_K * noise / 3, MIN_CONTRAST[mode])  # a 3 x 3 mean has a third of the noise
        # above the noise floor, or textured and at least faintly above the background; texture is
        # not trusted within the local-std window of background (it would grow a halo around every
        # speck and tissue edge, and a line along the step between scanned and unscanned glass)
        faint = base + max(NOISE_K * noise / 6, MIN_CONTRAST[mode] / 2)
        texture = ~pixels.flat & (signal > faint) & ~_dilate(bg_pixels, 5)
        tissue = valid & ~bg_pixels & ((signal > threshold) | texture)
        mask = _clean(tissue, max(_MIN_OBJECT_PX, int(min_object_frac * signal.size))) & valid
        # holes whose only background is a speck (< 4 x the smallest object) are faint tissue too
        real_background = _drop_small(bg_pixels, 4 * max(_MIN_OBJECT_PX, int(min_object_frac * signal.size)))
        mask = _fill_holes_without_background(mask, real_background, valid)
        separation = float(np.median(_subsample(signal, mask)) - base) if mask.any() else 0.0
    else:
        lo, hi = np.percentile(_subsample(signal, valid), [1, 99]) if valid.any() else (0.0, 0.0)
        separation = float(hi - lo)
        threshold = float(lo)
        # No background class: the frame is all tissue, unless it is uniform (nothing there at all).
        mask = valid.copy() if separation >= min_separation else np.zeros(valid.shape, bool)
        if not mask.any():
            _log.info("no background and no contrast (signal spread %.1f < %.1f): empty mask", separation,
                      min_separation)
    rest = bg_pixels if found else (valid & ~mask)
    if rest.any():
        bg_rgb = tuple(int(v) for v in np.median(_subsample(rgb, rest), axis=0))
    else:
        bg_rgb = (0, 0, 0) if mode == "dark" else (255, 255, 255)
    _log.info("tissue detection: background %s (%s), background %s, threshold %.1f, noise %.2f, tissue %.1f%% "
              "of the slide", mode, method, "found" if found else "not found", threshold, noise, 100 * mask.mean())
    return TissueMask(mask=mask, background=mode, threshold=float(threshold), separation=separation,
                      background_rgb=bg_rgb, background_found=found, background_method=method, noise=noise,
                      glass_fraction=ev.glass_fraction, dark_fraction=ev.dark_fraction, reference_rgb=reference)


def _fill_holes_without_background(mask: np.ndarray, background: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill the holes of ``mask`` that hold no background pixel and do not reach the frame's edge:
    enclosed by tissue and showing no glass (or dark background), they are faint tissue."""
    labels, n = ndimage.label(valid & ~mask)
    if n == 0:
        return mask
    has_background = np.bincount(labels[background], minlength=n + 1) > 0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = ~has_background
    fill[edge] = False
    fill[0] = False
    return mask | fill[labels]


def _pixel_noise(signal: np.ndarray, where: np.ndarray) -> float:
    """Robust sigma of pixel-to-pixel noise inside ``where`` (from horizontal neighbour differences:
    slow changes of the background level, a gradient or two flat levels, do not count as noise)."""
    pair = where[:, 1:] & where[:, :-1]
    if not pair.any():
        return 0.0
    diff = np.abs(signal[:, 1:] - signal[:, :-1])
    return float(1.4826 * np.median(_subsample(diff, pair)) / np.sqrt(2.0))


def _subsample(values: np.ndarray, where: np.ndarray, n: int = 250_000) -> np.ndarray:
    """``values[where]`` thinned to about ``n`` pixels (a median of a subsample will do)."""
    step = max(1, int(np.sqrt(where.sum() / n)))
    return values[::step, ::step][where[::step, ::step]]


def pen_marks(rgb: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pen ink on a bright-field thumbnail (cheap colour rules): green/cyan ink and near-black ink.

    H&E and DAB never look green or cyan, and even dense nuclei keep a brightest channel above
    50; blue and red ink overlap haematoxylin and eosin in colour and are not detected.
    """
    px = _Pixels(_as_rgb(rgb))
    ink = (px.green_cyan & (px.saturation >= 0.25)) | (px.hi <= 50)
    return ink if valid is None else ink & valid


def _clean(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Open (drop specks), close (bridge hairline gaps), then drop small islands and fill small holes."""
    padded = np.pad(mask, 1, mode="edge")  # so closing does not erode tissue cut by the image edge
    padded = _opening(padded, 3)
    padded = _erode(_dilate(padded, 3), 3)  # closing
    mask = padded[1:-1, 1:-1]
    mask = _drop_small(mask, min_px)
    return ~_drop_small(~mask, min_px)


# Binary morphology with a k x k square as separable min/max filters on uint8 (several times faster
# than scipy's generic binary_erosion on thumbnails of millions of pixels); outside the image is 0.
def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    return ndimage.minimum_filter(mask.view(np.uint8), size=k, mode="constant", cval=0).view(bool)


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    return ndimage.maximum_filter(mask.view(np.uint8), size=k, mode="constant", cval=0).view(bool)


def _opening(mask: np.ndarray, k: int) -> np.ndarray:
    return _dilate(_erode(mask, k), k)


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
