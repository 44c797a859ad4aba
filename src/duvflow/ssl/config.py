"""Frozen settings of the self-supervised stage (built from the rules' ``params`` dicts).

Field meanings and defaults mirror the ``dino`` and ``embed`` sections of
``workflow/schemas/config.schema.yaml``, which owns their types, bounds and enums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CropConfig", "DinoAugmentConfig", "DinoConfig", "EmbedConfig", "HeadConfig"]


@dataclass(frozen=True)
class DinoAugmentConfig:
    """``dino.augment``: the multi-crop views' photometric and geometric augmentation."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p_global: tuple[float, float] = (1.0, 0.1)
    blur_p_local: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2
    stain: str = "none"  # stain jitter (duvflow.core.stain): none | hed | fluorescence
    stain_scale: float = 0.05
    stain_shift: float = 0.005


@dataclass(frozen=True)
class CropConfig:
    """``dino.crops``: local crops and the area ranges of global and local crops."""

    n_local: int = 8
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)


@dataclass(frozen=True)
class HeadConfig:
    """``dino.head``: the projection head (DINO's defaults)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    norm_last_layer: bool = True


@dataclass(frozen=True)
class DinoConfig:
    """The ``dino`` section."""

    backbone: str = "vit_small_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    init: str = "random"  # pretrained | random (duvflow.core.backbone.initial_weights)
    img_size: int = 224
    pooling: str = "cls"
    drop_path_rate: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    augment: DinoAugmentConfig = field(default_factory=DinoAugmentConfig)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 3
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    grad_clip: float = 3.0
    freeze_last_layer_epochs: float = 1
    collapse_std: float = 0.05
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    device: str = "auto"
    augment_on: str = "auto"
    mixed_precision: bool = True


@dataclass(frozen=True)
class EmbedConfig:
    """The ``embed`` section."""

    batch_size: int = 256
    device: str = "auto"
    mixed_precision: bool = True
