"""Patch QC, as slideflow filters whitespace and blur: per patch a focus measure and a background fraction.

Measured on every second row and column of each patch read for the store, on the slide's tissue
signal (:func:`~duvflow.slides.tissue.tissue_signal`: the brightest channel for fluorescence, the
white-balanced darkness of the darkest channel for bright-field), so that one pass gives both:

- ``focus``: variance of the Laplacian (Pech-Pacheco et al., ICPR 2000), the usual sharpness
  measure; out-of-focus and empty patches score low. It also grows with noise and contrast, so
  the default cut-off (``tiling.min_focus``) only removes nearly featureless patches.
- ``background_fraction``: the share of pixels whose signal stays within the slide's background
  noise floor (0 when the slide shows no background: then the frame is all tissue).
- ``pen_fraction``: the share of the patch covered by pen ink on the thumbnail (bright-field only).

A patch fails when its background fraction exceeds ``max_background_fraction``, its focus lies
below ``min_focus`` or its pen fraction exceeds ``max_pen_fraction``; failures are counted per
reason in the status record. Setting a limit to its extreme (1, 0, 1) turns that filter off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duvflow.slides.config import TilingConfig
from duvflow.slides.tissue import TissueMask

__all__ = ["PatchQC", "PatchVerdict", "focus_measure"]


def focus_measure(values: np.ndarray) -> float:
    """Variance of the (4-neighbour) Laplacian of a 2-D intensity image."""
    g = values.astype(np.float32, copy=False)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


@dataclass(frozen=True)
class PatchVerdict:
    focus: float
    background_fraction: float
    failed: str | None  # None, "background" or "focus"


@dataclass(frozen=True)
class PatchQC:
    """The patch filters of one slide (thread-safe: no state)."""

    tissue: TissueMask
    max_background_fraction: float
    min_focus: float
    max_pen_fraction: float

    @classmethod
    def for_slide(cls, cfg: TilingConfig, tissue: TissueMask) -> PatchQC:
        pen = cfg.max_pen_fraction if tissue.background == "bright" else 1.0  # ink shows only on bright-field
        return cls(tissue, cfg.max_background_fraction, cfg.min_focus, pen)

    def pen_failures(self, pen_fractions: np.ndarray) -> np.ndarray:
        return pen_fractions > self.max_pen_fraction

    def judge(self, patch: np.ndarray) -> PatchVerdict:
        signal = self.tissue.signal(patch[::2, ::2])
        focus = focus_measure(signal)
        background = float((signal <= self.tissue.threshold).mean()) if self.tissue.background_found else 0.0
        failed = None
        if background > self.max_background_fraction:
            failed = "background"
        elif focus < self.min_focus:
            failed = "focus"
        return PatchVerdict(focus, background, failed)
