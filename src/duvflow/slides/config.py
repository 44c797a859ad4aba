"""The ``tiling`` config section as a frozen dataclass (workflow/schemas/config.schema.yaml owns the bounds).

The schema checks types, bounds and enums when the workflow starts; :meth:`TilingConfig.from_dict`
repeats the checks for callers outside Snakemake (``duvflow predict``, benchmarks, tests), so a
bad value fails before a slide is opened.
"""

from __future__ import annotations

from dataclasses import dataclass

from duvflow.core.config import from_dict
from duvflow.slides.channels import DEFAULT_CHANNEL_COLOURS, parse_colour
from duvflow.slides.store import COMPRESSIONS
from duvflow.slides.tissue import BACKGROUNDS

__all__ = ["MIN_PATCH_PX", "TilingConfig"]

MIN_PATCH_PX = 16


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
    channel_colours: tuple[str, ...] = DEFAULT_CHANNEL_COLOURS
    max_background_fraction: float = 0.9
    min_focus: float = 2.0
    max_pen_fraction: float = 0.25

    @classmethod
    def from_dict(cls, d: dict | None) -> TilingConfig:
        cfg = from_dict(cls, d, "tiling")
        problems = []
        if not (isinstance(cfg.level, int) and cfg.level >= 0):
            problems.append(f"level must be an integer >= 0, got {cfg.level!r}")
        if not (isinstance(cfg.patch_size, int) and cfg.patch_size >= MIN_PATCH_PX):
            problems.append(f"patch_size must be an integer >= {MIN_PATCH_PX}, got {cfg.patch_size!r}")
        for key in ("patch_um", "default_mpp"):
            v = getattr(cfg, key)
            if v is not None and not (isinstance(v, int | float) and v > 0):
                problems.append(f"{key} must be a positive number or null, got {v!r}")
        if cfg.background not in BACKGROUNDS:
            problems.append(f"background must be one of {', '.join(BACKGROUNDS)}, got {cfg.background!r}")
        for key in ("min_tissue_fraction", "max_background_fraction", "max_pen_fraction"):
            v = getattr(cfg, key)
            if not (isinstance(v, int | float) and 0 <= v <= 1):
                problems.append(f"{key} must be in [0, 1], got {v!r}")
        if not (isinstance(cfg.min_focus, int | float) and cfg.min_focus >= 0):
            problems.append(f"min_focus must be a number >= 0, got {cfg.min_focus!r}")
        if not (isinstance(cfg.thumbnail_max, int) and cfg.thumbnail_max >= 64):
            problems.append(f"thumbnail_max must be an integer >= 64, got {cfg.thumbnail_max!r}")
        if cfg.on_bad_slide not in ("fail", "skip"):
            problems.append(f"on_bad_slide must be 'fail' or 'skip', got {cfg.on_bad_slide!r}")
        if cfg.store_compression not in COMPRESSIONS:
            problems.append(f"store_compression must be one of {', '.join(COMPRESSIONS)}, got {cfg.store_compression!r}")
        problems.extend(_colour_problems(cfg.channel_colours))
        if problems:
            raise ValueError("invalid tiling config: " + "; ".join(problems))
        return cfg


def _colour_problems(colours) -> list[str]:
    if not colours:
        return ["channel_colours must list at least one colour"]
    bad = []
    for c in colours:
        try:
            parse_colour(str(c))
        except ValueError:
            bad.append(repr(c))
    return [f"channel_colours must be #rrggbb strings, got {', '.join(bad)}"] if bad else []
