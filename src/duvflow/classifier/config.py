"""Frozen settings of the classifier stage (built from the rules' ``params`` dicts).

Field meanings and defaults mirror the ``classifier`` section of
``workflow/schemas/config.schema.yaml``, which owns their types, bounds and enums.
"""

from __future__ import annotations

import dataclasses

__all__ = ["SELECTION_METRICS", "ClassifierAugmentConfig", "ClassifierConfig"]

SELECTION_METRICS = ("slide_auc", "slide_loss")
BALANCE = ("sampler", "loss", "none")


@dataclasses.dataclass(frozen=True)
class ClassifierAugmentConfig:
    """The ``classifier.augment`` section (applied to training images only)."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    stain: str = "none"  # stain jitter (duvflow.core.stain): none | hed | fluorescence
    stain_scale: float = 0.05
    stain_shift: float = 0.005


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The ``classifier`` section (see the schema for each key's meaning)."""

    model: str = "vit_base_patch16_224"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    weights: str | None = None
    init: str = "random"  # pretrained | dino | random (duvflow.core.backbone.initial_weights)
    img_size: int = 224
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-5
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (timm param_groups_layer_decay); None = off
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "sampler"
    augment: ClassifierAugmentConfig = dataclasses.field(default_factory=ClassifierAugmentConfig)
    selection_metric: str = "slide_auc"
    val_max_patches_per_slide: int | None = None
    eval_batch_size: int = 128
    preload: bool = False
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    num_workers: int = 4
    device: str = "auto"
    mixed_precision: bool = True

    def __post_init__(self):
        # the schema checks the workflow's configs; this guards direct calls from Python, whose
        # misspelt choice would otherwise silently fall through to "no balancing"
        if self.balance not in BALANCE:
            raise ValueError(f"classifier.balance must be one of {BALANCE}, got {self.balance!r}")
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(f"classifier.selection_metric must be one of {SELECTION_METRICS}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"classifier.layer_decay must be in (0, 1] or null, got {self.layer_decay}")
