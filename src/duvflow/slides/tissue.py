"""Tissue detection on a low-resolution thumbnail (Otsu), for dark- and bright-background slides.

Fluorescence (DUV) slides show bright tissue on a dark background; bright-field (H&E) slides show
dark, coloured tissue on white glass. Each mode turns the thumbnail into a "tissue signal" that is
high on tissue, then thresholds it with Otsu's method:

- ``dark``: the brightest channel (fluorescence in any colour counts);
- ``bright``: 255 minus the darkest channel (stained or dark pixels count, white glass does not).

The threshold is Otsu's on the log of that signal, so dim tissue (weak autofluorescence, pale
eosin) stays on the tissue side.

``auto`` decides per slide: the thumbnail's border is mostly background, so the background is bright
when the border's median luminance lies above the Otsu threshold of the whole thumbnail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BACKGROUNDS", "TissueMask", "choose_background", "detect_tissue", "otsu_threshold"]

_log = logging.getLogger(__name__)

BACKGROUNDS = ("auto", "dark", "bright")
_LOG_LUT = np.rint(np.log1p(np.arange(256)) * 255.0 / np.log(256.0)).astype(np.int64)  # 0..255 -> log scale 0..255


@dataclass(frozen=True)
class TissueMask:
    """Tissue mask at thumbnail resolution and how it was found."""

    mask: np.ndarray  # bool (h, w)
    background: str  # "dark" or "bright" (never "auto": the mode actually used)
    threshold: float  # on the 0..255 tissue-signal scale
    separation: float  # tissue-signal difference between Otsu's two classes
    background_rgb: tuple[int, int, int]  # median colour of the non-tissue pixels

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def otsu_threshold(values: np.ndarray) -> tuple[float, float, float]:
    """Otsu's threshold of uint8-range ``values`` and the means of the two classes it separates.

    Pixels ``> threshold`` form the upper class.
    """
    v = np.asarray(values).ravel()
    if v.dtype != np.uint8:
        v = np.clip(v, 0, 255).astype(np.uint8)
    return _otsu_hist(np.bincount(v, minlength=256))


def _otsu_hist(hist: np.ndarray) -> tuple[float, float, float]:
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 0.0, 0.0, 0.0
    levels = np.arange(len(hist), dtype=np.float64)
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


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Integer Rec. 601 luma, uint8."""
    r, g, b = (rgb[..., i].astype(np.uint16) for i in range(3))
    return ((r * 77 + g * 150 + b * 29) >> 8).astype(np.uint8)


def _border(shape: tuple[int, int], width_frac: float = 0.03) -> np.ndarray:
    h, w = shape
    b = max(1, round(width_frac * min(h, w)))
    border = np.zeros((h, w), bool)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    return border


def choose_background(rgb: np.ndarray, valid: np.ndarray | None = None) -> str:
    """``"dark"`` or ``"bright"``: which side of the luminance Otsu threshold the border lies on."""
    step = max(1, min(rgb.shape[:2]) // 512)  # a subsample is plenty for one decision
    rgb = rgb[::step, ::step]
    lum = _luminance(rgb)
    valid = np.ones(lum.shape, bool) if valid is None else np.asarray(valid, bool)[::step, ::step]
    border = _border(lum.shape) & valid
    if not border.any():
        border = valid
    if not border.any():
        return "dark"
    border_median = float(np.median(lum[border]))
    t, mu0, mu1 = otsu_threshold(lum[valid])
    if mu1 - mu0 < 10:  # no contrast (empty or uniform slide): judge the absolute brightness
        return "bright" if border_median >= 128 else "dark"
    return "bright" if border_median > t else "dark"


def tissue_signal(rgb: np.ndarray, background: str) -> np.ndarray:
    """Per-pixel uint8 value that is high on tissue for the given background mode."""
    if background == "dark":
        return rgb.max(axis=-1).astype(np.uint8)
    if background == "bright":
        return (255 - rgb.min(axis=-1)).astype(np.uint8)
    raise ValueError(f"background must be 'dark' or 'bright', got {background!r}")


def detect_tissue(rgb: np.ndarray, valid: np.ndarray | None = None, background: str = "auto", *,
                  min_separation: float = 20.0, min_object_frac: float = 2e-4) -> TissueMask:
    """Tissue mask of an RGB thumbnail.

    ``valid`` marks pixels that belong to the slide (OpenSlide reports pixels outside the scanned
    area as transparent); they never count as tissue. ``min_separation``: when the two classes
    differ by less than this (mean tissue signal) the slide is taken as empty (Otsu would otherwise
    split pure background noise in two). Specks and holes smaller than ``min_object_frac`` of the
    thumbnail are cleaned away.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB thumbnail, got shape {rgb.shape}")
    rgb = np.asarray(rgb, np.uint8)
    valid = np.ones(rgb.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    mode = choose_background(rgb, valid) if background == "auto" else background

    signal = ndimage.uniform_filter(tissue_signal(rgb, mode), size=3)  # soften pixel noise
    hist = np.bincount(signal[valid], minlength=256).astype(np.float64)
    # Otsu on the log-signal: tissue signal is multiplicative (fluorescence yield, stain density), and
    # on a linear scale Otsu splits bright from dim tissue instead of dim tissue from the background.
    log_hist = np.bincount(_LOG_LUT, weights=hist, minlength=256)
    log_t, _, _ = _otsu_hist(log_hist)
    threshold = float(np.nonzero(_LOG_LUT <= log_t)[0].max())  # signal > threshold is tissue
    lo, hi = hist[: int(threshold) + 1], hist[int(threshold) + 1:]
    levels = np.arange(256, dtype=np.float64)
    separation = 0.0
    if lo.sum() > 0 and hi.sum() > 0:
        separation = float((hi * levels[int(threshold) + 1:]).sum() / hi.sum()
                           - (lo * levels[: int(threshold) + 1]).sum() / lo.sum())
    if separation < min_separation:
        mask = np.zeros(signal.shape, bool)
        _log.info("no tissue contrast (classes %.1f apart < %.1f): empty mask", separation, min_separation)
    else:
        mask = _clean((signal > threshold) & valid, max(4, int(min_object_frac * signal.size)))
        mask &= valid

    rest = valid & ~mask
    if rest.any():
        step = max(1, int(np.sqrt(rest.sum() / 250_000)))  # the median of a subsample will do
        bg_rgb = tuple(int(v) for v in np.median(rgb[::step, ::step][rest[::step, ::step]], axis=0))
    else:
        bg_rgb = (0, 0, 0) if mode == "dark" else (255, 255, 255)
    _log.info("tissue detection: background %s%s, threshold %.0f, separation %.1f, tissue %.1f%% of the slide",
              mode, " (auto)" if background == "auto" else "", threshold, separation, 100 * mask.mean())
    return TissueMask(mask=mask, background=mode, threshold=threshold, separation=separation,
                      background_rgb=bg_rgb)


def _clean(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Open (drop specks), close (bridge hairline gaps), then drop small islands and fill small holes."""
    st = np.ones((3, 3), bool)
    padded = np.pad(mask, 1, mode="edge")  # so closing does not erode tissue cut by the image edge
    padded = ndimage.binary_opening(padded, st)
    padded = ndimage.binary_closing(padded, st)
    mask = padded[1:-1, 1:-1]
    mask = _drop_small(mask, min_px)
    return ~_drop_small(~mask, min_px)


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
