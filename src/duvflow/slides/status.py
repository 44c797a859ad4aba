"""The tiling status record (``tiles/{slide}.json``, see docs/architecture.md): one dataclass, filled in steps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["TilingStatus"]


@dataclass
class TilingStatus:
    """What tiling one slide did; ``to_dict`` is the JSON written (every key always present)."""

    slide_id: str
    label: str
    path: str
    background_requested: str
    level: int
    patch_um: float | None
    min_tissue_fraction: float
    status: str = "ok"  # ok | no_tissue | skipped
    reason: str = ""
    n_patches: int = 0  # kept: in the table and the store
    n_candidates: int = 0  # grid cells inside the slide
    n_tissue_patches: int = 0  # candidates whose tissue fraction reaches min_tissue_fraction (before patch QC)
    n_filtered_background: int = 0  # dropped by patch QC: background fraction above max_background_fraction
    n_filtered_focus: int = 0  # dropped by patch QC: variance of the Laplacian below min_focus
    n_filtered_pen: int = 0  # dropped by patch QC: pen ink above max_pen_fraction (bright-field)
    background: str | None = None  # mode used: dark | bright
    background_method: str | None = None  # "requested", or the evidence auto used
    background_found: bool | None = None  # False: no background in view, the frame is taken as all tissue
    background_noise: float | None = None  # robust sigma of the background's tissue signal (0..255)
    glass_fraction: float | None = None  # share of the slide that looks like bright-field glass
    dark_fraction: float | None = None  # share that looks like a dark fluorescence background
    pen_fraction: float | None = None  # share of the slide with pen ink (bright-field)
    background_rgb: list[int] | None = None
    tissue_rgb: list[int] | None = None  # median colour of the tissue on the thumbnail (cohort colour QC)
    threshold: float | None = None
    tissue_area_mm2: float | None = None
    tissue_area_px: int | None = None
    tissue_fraction: float | None = None
    mpp: float | None = None
    mpp_x: float | None = None
    mpp_y: float | None = None
    mpp_source: str | None = None
    patch_size: int | None = None
    size_level0: int | None = None
    downsample: float | None = None
    dimensions: list[int] | None = None
    level_count: int | None = None
    vendor: str | None = None
    problems: list[str] = field(default_factory=list)
    elapsed_s: float | None = None
    duvflow_version: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
