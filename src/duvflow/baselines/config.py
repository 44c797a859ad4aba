"""The ``baselines`` config section (see the schema for each key's meaning)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BASELINE_ARMS", "BaselineConfig", "HandcraftedConfig"]

BASELINE_ARMS = ("probe", "handcrafted")  # arm names; every other arm is a deep classifier


@dataclass(frozen=True)
class HandcraftedConfig:
    image_size: int = 128
    lbp_radii: tuple[int, ...] = (1, 2)
    glcm_levels: int = 32
    glcm_distances: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if self.image_size < 16 or self.glcm_levels < 2 or not self.lbp_radii or not self.glcm_distances:
            raise ValueError("baselines.handcrafted: image_size >= 16, glcm_levels >= 2 and at least one LBP radius "
                             "and GLCM distance are needed")


@dataclass(frozen=True)
class BaselineConfig:
    logreg_c: float = 1.0
    balance: bool = True
    max_train_patches: int = 50000
    handcrafted: HandcraftedConfig = field(default_factory=HandcraftedConfig)
