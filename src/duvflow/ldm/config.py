"""Frozen settings of the latent-diffusion stage (built from the rules' ``params`` dicts).

Field meanings and defaults mirror the ``vae``, ``ldm``, ``sampling`` and ``fidelity`` sections
of ``workflow/schemas/config.schema.yaml``; the defaults here are the paper-scale ones. The schema
owns types and bounds; the checks here are those spanning several keys and the choices a direct
Python call could misspell into a silently different branch.
"""

from __future__ import annotations

import dataclasses

__all__ = ["FidelityConfig", "LdmConfig", "SamplingConfig", "VaeConfig"]


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    pretrained: str | None = None
    image_size: int = 256
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    scaling_factor: float | None = None
    scaling_patches: int = 512
    steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    kl_weight: float = 1e-6
    recon_loss: str = "l1"
    grad_clip: float = 1.0
    augment: bool = True
    checkpoint_every: int = 1000
    checkpoints_keep: int = 2
    log_every: int = 50
    encode_batch_size: int = 32
    num_workers: int = 4
    device: str = "auto"

    def __post_init__(self):
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"vae.recon_loss must be l1 or mse, got {self.recon_loss!r}")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"vae.image_size {self.image_size} is not divisible by the VAE's downsampling factor "
                             f"{2 ** (len(self.block_out_channels) - 1)}")


@dataclasses.dataclass(frozen=True)
class LdmConfig:
    block_out_channels: tuple[int, ...] = (256, 512, 768)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 2
    attention_heads: int = 8
    cross_attention_dim: int = 512
    norm_num_groups: int = 32
    num_tokens: int = 1
    null_condition: str = "zeros"
    condition_drop: float = 0.1
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = 50000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    checkpoint_every: int = 2000
    checkpoints_keep: int = 2
    log_every: int = 50
    grid_every: int = 5000
    grid_size: int = 8
    grid_steps: int = 50
    grid_guidance: float = 2.0
    mixed_precision: bool = True
    device: str = "auto"

    def __post_init__(self):
        if self.null_condition not in ("zeros", "learned"):
            raise ValueError(f"ldm.null_condition must be zeros or learned, got {self.null_condition!r}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"ldm.prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if len(self.down_block_types) != len(self.block_out_channels) or \
                len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError("ldm.down_block_types and ldm.up_block_types need one entry per ldm.block_out_channels")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    steps: int = 50
    guidance: float | tuple[float, ...] = 2.0  # a list: the classifier's set uses the first
    eta: float = 0.0
    synthetic_fraction: float | tuple[float, ...] = 0.05  # a list: one set at the largest, nested subsets
    max_synthetic: int | None = None
    batch_size: int = 32
    mixed_precision: bool = True
    device: str = "auto"

    @property
    def guidance_values(self) -> tuple[float, ...]:
        """Every configured guidance scale; the first is the classifier arms'."""
        values = self.guidance if isinstance(self.guidance, tuple) else (self.guidance,)
        return tuple(float(v) for v in values)

    @property
    def largest_fraction(self) -> float:
        """The fraction the set is sampled at: the largest of a sweep (its smaller sets are subsets)."""
        f = self.synthetic_fraction
        return float(max(f) if isinstance(f, tuple) else f)


@dataclasses.dataclass(frozen=True)
class FidelityConfig:
    unconditional: bool = True  # chooses jobs (the guidance-0 sets), read by the rules only
    inception_weights: str | None = None
    inception_size: int = 299
    max_real: int = 10000
    max_synthetic: int = 10000
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    batch_size: int = 32
    near_copy_percentile: float = 1.0
    device: str = "auto"
