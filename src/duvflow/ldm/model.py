"""The latent diffusion model: build, save and load it, and sample it with guided DDIM.

The denoiser is a diffusers ``UNet2DConditionModel`` whose cross-attention reads the context
tokens of :class:`~duvflow.ldm.conditioning.ConditionEncoder`. A trained model is a
diffusers-loadable folder::

    unet/        UNet2DConditionModel (EMA weights)
    condition/   ConditionEncoder (EMA weights)
    scheduler/   DDPMScheduler config (DDIMScheduler.from_pretrained reads it too)
    ldm.json     condition kind, fold, latent shape, VAE folder, versions

Each DDIM step (Song et al., ICLR 2021) runs the UNet ONCE on the concatenated
[conditional, unconditional] batch and combines the halves with classifier-free guidance
(Ho & Salimans, 2022): ``guided = uncond + w * (cond - uncond)``. Training (progress grids) and
sampling both use it; neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from duvflow.core.io import read_json, write_json
from duvflow.ldm.conditioning import ConditionEncoder
from duvflow.ldm.config import LdmConfig

__all__ = ["build_noise_scheduler", "build_unet", "cfg_combine", "guided_ddim", "load_ldm", "save_ldm"]


def build_unet(cfg: LdmConfig, latent_channels: int, latent_size: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
        mid_block_type=cfg.mid_block_type, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_heads,  # diffusers' name; it is the number of heads
        norm_num_groups=cfg.norm_num_groups,
    )


def build_noise_scheduler(cfg: LdmConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type=cfg.prediction_type,
                         clip_sample=False)


def save_ldm(folder, unet, encoder, noise_scheduler, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    encoder.save_pretrained(folder / "condition", safe_serialization=True)
    noise_scheduler.save_pretrained(folder / "scheduler")
    write_json(meta, folder / "ldm.json")


def load_ldm(folder, device="cpu"):
    """(unet, condition encoder, DDIM scheduler, metadata) of a trained LDM folder, in eval mode."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    folder = Path(folder)
    if not (folder / "ldm.json").is_file():
        raise FileNotFoundError(f"{folder} is not a trained LDM folder (no ldm.json)")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True,
                                                low_cpu_mem_usage=False).to(device).eval()
    encoder = ConditionEncoder.from_pretrained(folder / "condition", local_files_only=True,
                                               low_cpu_mem_usage=False).to(device).eval()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    return unet, encoder, scheduler, read_json(folder / "ldm.json")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + w * (cond - uncond)``."""
    return uncond + guidance * (cond - uncond)


def guided_ddim(unet, context: torch.Tensor, null_context: torch.Tensor, noise: torch.Tensor, scheduler,
                steps: int, guidance: float, eta: float = 0.0, generator=None) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) with ``steps`` DDIM steps and guidance ``guidance``.

    One UNet call per step: on [x, x] with context [cond, null] (B each); at ``guidance == 1``
    the unconditional half is not needed and the call runs on B samples only.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    guided = guidance != 1.0
    ctx = torch.cat([context, null_context.to(context.dtype)]) if guided else context
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        out = unet(inp, t, ctx, return_dict=False)[0]
        if guided:
            cond, uncond = out.chunk(2)
            out = cfg_combine(cond, uncond, guidance)
        x = scheduler.step(out.float(), t, x, eta=eta, generator=generator, return_dict=False)[0]
    return x
