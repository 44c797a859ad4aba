"""The autoencoder of the latent diffusion model (diffusers ``AutoencoderKL``).

Either a local pretrained VAE named in the config (a diffusers folder, a pipeline folder with a
``vae/`` subfolder, or a single safetensors/torch file in diffusers or original-LDM key layout)
is loaded and frozen, or a VAE is trained on the fold's training patches (reconstruction + KL
loss, Rombach et al., CVPR 2022; :func:`duvflow.ldm.train.train_vae`) so that the workflow runs
with no downloaded weights.

The fold's folder ``vae/fold_{fold}/`` is either a diffusers ``AutoencoderKL`` folder or holds
``pretrained.json`` pointing at the configured VAE; :func:`load_vae` reads both. Latents are
multiplied by ``vae.config.scaling_factor`` (estimated as 1/std of training latents for a VAE
trained here, kept from a pretrained one unless the config overrides it).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path
from duvflow.core.patches import PatchDataset
from duvflow.core.pretrained import is_hub_repo_id
from duvflow.core.runtime import configure_threads, progress, select_device
from duvflow.ldm.config import VaeConfig
from duvflow.ldm.data import fold_training_patches, write_latent_store
from duvflow.train.checkpoint import load_weights

__all__ = ["REFERENCE_FILE", "build_vae", "decode_latents", "encode_images", "encode_latents", "load_vae"]

_log = logging.getLogger(__name__)
REFERENCE_FILE = "pretrained.json"


def build_vae(cfg: VaeConfig):
    """A randomly initialised ``AutoencoderKL`` with the configured architecture."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=cfg.image_size,
        mid_block_add_attention=cfg.mid_block_attention,
        scaling_factor=cfg.scaling_factor if cfg.scaling_factor else 1.0,
    )


def load_vae(path: str | os.PathLike, cfg: VaeConfig | None = None):
    """A frozen ``AutoencoderKL`` from a fold's VAE folder or a user's pretrained VAE.

    ``path`` may be a diffusers folder (``config.json`` + weights), a pipeline folder with a
    ``vae/`` subfolder, a folder with ``pretrained.json`` (written by ``train_vae``), or a
    weights file; a weights file is loaded into the architecture described by ``cfg``.
    """
    from diffusers import AutoencoderKL

    path = Path(path)
    scaling = None
    if is_hub_repo_id(str(path)):  # e.g. stabilityai/sd-vae-ft-mse: the hub cache, or downloaded when online
        vae = AutoencoderKL.from_pretrained(str(path), low_cpu_mem_usage=False)
    elif (path / REFERENCE_FILE).is_file():
        ref = json.loads((path / REFERENCE_FILE).read_text())
        scaling = ref.get("scaling_factor")
        vae = load_vae(ref["path"], from_dict(VaeConfig, ref.get("vae_config"), "vae"))
    elif (path / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    elif (path / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True,
                                            low_cpu_mem_usage=False)
    elif path.is_file():
        if cfg is None:
            raise ValueError(f"VAE weights file {path}: the architecture (vae section of the config) is needed")
        vae = build_vae(cfg)
        state = load_weights(path)
        state = _to_diffusers_keys(state, vae, path)
        try:
            missing, unexpected = vae.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"VAE weights file {path} does not fit the configured architecture "
                             f"(vae.block_out_channels, latent_channels, ...): {str(err)[:300]}") from None
        if missing or unexpected:
            raise ValueError(f"VAE weights file {path} does not fit the configured architecture "
                             f"(vae.block_out_channels etc.): missing {missing[:4]}, unexpected {unexpected[:4]}")
    elif path.is_dir():
        raise ValueError(f"VAE folder {path} holds neither a diffusers config.json, a vae/ subfolder nor "
                         f"{REFERENCE_FILE}")
    else:
        raise FileNotFoundError(f"VAE {path} does not exist")
    if scaling is not None:
        vae.register_to_config(scaling_factor=float(scaling))
    vae.requires_grad_(False).eval()
    return vae


def _to_diffusers_keys(state: dict, vae, path) -> dict:
    """Accept original-LDM / Stable Diffusion VAE key names as well as diffusers ones."""
    own = vae.state_dict().keys()
    if set(state) & set(own):
        return state
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        return convert_ldm_vae_checkpoint(state, dict(vae.config))
    except (KeyError, IndexError, ValueError, RuntimeError) as err:  # the converter's errors on foreign layouts
        raise ValueError(f"VAE weights file {path}: neither diffusers nor LDM key layout ({err})") from None


def encode_images(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] -> scaled posterior (mean, std)."""
    dist = vae.encode(images * 2 - 1).latent_dist
    sf = vae.config.scaling_factor
    return dist.mean * sf, dist.std * sf


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    return vae.decode(latents / vae.config.scaling_factor).sample


@torch.no_grad()
def encode_latents(*, vae_model: str, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                   splits: str, fold: str, output: str, vae: dict, threads: int = 1) -> None:
    """Encode every training patch of ``fold`` once with the fold's VAE ``vae_model`` into the latent
    store ``output`` (``vae``: the config section)."""
    cfg = from_dict(VaeConfig, vae, "vae")
    configure_threads(threads)
    device = select_device(cfg.device)
    model = load_vae(vae_model).to(device)
    index = fold_training_patches(tables, stores, statuses, splits, fold)
    loader = torch.utils.data.DataLoader(PatchDataset(index, size=cfg.image_size), batch_size=cfg.encode_batch_size,
                                         num_workers=cfg.num_workers, shuffle=False)
    means, stds = [], []
    for images, _, _ in progress(loader, desc=f"encode fold {fold}"):
        mean, std = encode_images(model, images.to(device))
        means.append(mean.float().cpu().numpy())
        stds.append(std.float().cpu().numpy())
    mean, std = np.concatenate(means), np.concatenate(stds)
    attrs = {"fold": str(fold), "image_size": cfg.image_size, "scaling_factor": float(model.config.scaling_factor),
             "latent_channels": int(mean.shape[1]), "latent_size": int(mean.shape[-1]), "vae": str(vae_model)}
    with atomic_path(output) as tmp:
        write_latent_store(tmp, mean, std, index, attrs)
    _log.info("fold %s: %d latents of shape %s written to %s", fold, len(mean), mean.shape[1:], output)
