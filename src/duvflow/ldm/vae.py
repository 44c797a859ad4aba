"""The autoencoder of the latent diffusion model (diffusers ``AutoencoderKL``).

Either a local pretrained VAE named in the config (a diffusers folder, a pipeline folder with a
``vae/`` subfolder, or a single safetensors/torch file in diffusers or original-LDM key layout)
is loaded and frozen, or a VAE is trained on the fold's training patches (reconstruction + KL
loss, Rombach et al., CVPR 2022) so that the workflow runs with no downloaded weights.

The fold's folder ``vae/fold_{fold}/`` is either a diffusers ``AutoencoderKL`` folder or holds
``pretrained.json`` pointing at the configured VAE; :func:`load_vae` reads both. Latents are
multiplied by ``vae.config.scaling_factor`` (estimated as 1/std of training latents for a VAE
trained here, kept from a pretrained one unless the config overrides it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_json
from duvflow.core.patches import PatchDataset
from duvflow.core.pretrained import is_hub_repo_id
from duvflow.core.runtime import configure_threads, progress, seed_everything, select_device
from duvflow.core.splits import fold_seed
from duvflow.ldm.common import MetricsLog, run_metadata
from duvflow.ldm.config import VaeConfig
from duvflow.ldm.data import StepBatches, fold_training_patches, write_latent_store
from duvflow.train.checkpoint import CheckpointManager, load_weights, restore_rng_state, rng_state
from duvflow.train.distributed import all_reduce_gradients, all_reduce_mean, init_distributed, shard_batches

__all__ = ["build_vae", "decode_latents", "encode_images", "encode_latents", "load_vae", "train_vae"]

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
    ``vae/`` subfolder, a folder with ``pretrained.json`` (written by :func:`train_vae`), or a
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


def _augment(images: torch.Tensor, generator: torch.Generator, offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Random dihedral transforms (tissue has no canonical orientation: 8 views for free).

    The draws are made for the whole global batch of ``total`` images and this shard, which starts
    at ``offset``, takes its own, so data-parallel ranks augment as a single process would.
    """
    total = total or len(images)
    ks = torch.randint(0, 4, (total,), generator=generator)[offset:offset + len(images)].tolist()
    flips = torch.randint(0, 2, (total,), generator=generator)[offset:offset + len(images)].tolist()
    out = [torch.rot90(img, k, dims=(1, 2)) for img, k in zip(images, ks, strict=True)]
    out = [img.flip(2) if f else img for img, f in zip(out, flips, strict=True)]
    return torch.stack(out)


def train_vae(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None, splits: str,
              fold: str, output: str, checkpoint_dir: str, cfg: dict, seed: int, threads: int = 1) -> None:
    """Train (or reference a pretrained) VAE for ``fold``; writes the folder ``output``.

    Under torchrun (rule ``gpu`` > 1) each process trains on its contiguous shard of every global
    batch (``batch_size`` stays global), gradients are averaged over ranks before clipping, and
    only rank 0 writes metrics, checkpoints and the output.
    """
    cfg = from_dict(VaeConfig, cfg, "vae")
    configure_threads(threads)
    if cfg.pretrained:
        vae = load_vae(cfg.pretrained, cfg)  # fail now, not in a later rule, when it doesn't load
        scaling = cfg.scaling_factor or vae.config.scaling_factor
        source = cfg.pretrained if is_hub_repo_id(cfg.pretrained) else str(Path(cfg.pretrained).resolve())
        with atomic_path(output, suffix="") as tmp:
            tmp.mkdir()
            write_json({"path": source, "scaling_factor": scaling,
                        "vae_config": _asdict(cfg), **run_metadata(fold=fold)}, tmp / REFERENCE_FILE)
        _log.info("fold %s uses the pretrained VAE %s (scaling factor %.5f)", fold, cfg.pretrained, scaling)
        return

    seed = fold_seed(seed, fold)
    seed_everything(seed)
    ctx = init_distributed(cfg.device)
    device = ctx.device
    index = fold_training_patches(tables, stores, statuses, splits, fold)
    dataset = PatchDataset(index, size=cfg.image_size)
    vae = build_vae(cfg).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    generator = torch.Generator().manual_seed(seed)
    batches = StepBatches(len(dataset), cfg.batch_size, seed)

    run_config = {"vae": _asdict(cfg), "fold": fold, "seed": seed, "n_patches": len(dataset)}
    ckpt = CheckpointManager(checkpoint_dir, run_config, keep=cfg.checkpoints_keep)
    start = 0
    if (state := ckpt.load_latest()) is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        start = int(state["step"])
    metrics = (MetricsLog(Path(checkpoint_dir) / "metrics.csv", ["step", "loss", "recon", "kl", "lr"], start)
               if ctx.is_main else None)

    # every rank walks the same global batches and loads only its shard of each
    global_batches = [batches(s).tolist() for s in range(start, cfg.steps)]
    # own generator: creating the loader must not draw from the (restored) global RNG
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=shard_batches(global_batches, ctx),
                                         num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(seed))
    pixels = 3 * cfg.image_size**2
    params = list(vae.parameters())
    offset = ctx.rank * (cfg.batch_size // ctx.world_size)
    step = start
    for images, _, _ in progress(loader, total=cfg.steps - start, desc=f"VAE fold {fold}", initial=0):
        images = images.to(device)
        if cfg.augment:
            images = _augment(images, generator, offset, cfg.batch_size)
        x = images * 2 - 1
        posterior = vae.encode(x).latent_dist
        # the posterior noise of the global batch, from the shared generator; this rank's part of it
        eps = torch.randn((cfg.batch_size, *posterior.mean.shape[1:]), generator=generator)
        z = posterior.mean + posterior.std * eps[offset:offset + len(x)].to(device)
        recon = vae.decode(z).sample
        rec = F.l1_loss(recon, x) if cfg.recon_loss == "l1" else F.mse_loss(recon, x)
        # LDM's weighting: kl_weight multiplies the KL against the per-image *summed* reconstruction
        kl = posterior.kl().mean() / pixels
        loss = rec + cfg.kl_weight * kl
        loss.backward()
        all_reduce_gradients(params, ctx)  # equal shards: the mean of rank means is the global mean
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            values = all_reduce_mean(torch.stack([loss, rec, kl]).detach().float(), ctx).tolist()  # all ranks join
            if ctx.is_main:
                metrics.log(step=step, loss=values[0], recon=values[1], kl=values[2] * pixels,
                            lr=lr_scheduler.get_last_lr()[0])
        # every rank holds the same weights; rank 0 writes
        if ctx.is_main and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                             "lr_scheduler": lr_scheduler.state_dict(), "generator": generator.get_state(),
                             "rng": rng_state()})

    if not ctx.is_main:
        return
    vae.eval().requires_grad_(False)
    scaling = cfg.scaling_factor or _estimate_scaling(vae, dataset, cfg, seed, device)
    vae.register_to_config(scaling_factor=float(scaling))
    with atomic_path(output, suffix="") as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        write_json(run_metadata(fold=fold, n_patches=len(dataset), steps=cfg.steps, vae=_asdict(cfg)),
                   tmp / "duvflow_vae.json")
        shutil.copyfile(metrics.path, tmp / "metrics.csv")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: the resumable state is no longer needed
    _log.info("VAE fold %s trained for %d steps; scaling factor %.5f", fold, cfg.steps, scaling)


@torch.no_grad()
def _estimate_scaling(vae, dataset, cfg: VaeConfig, seed: int, device) -> float:
    """1 / std of posterior samples over a fixed subset of training patches (as in LDM)."""
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randperm(len(dataset), generator=g)[: cfg.scaling_patches].tolist()
    zs = []
    for start in range(0, len(rows), cfg.encode_batch_size):
        batch = torch.stack([dataset[i][0] for i in rows[start:start + cfg.encode_batch_size]]).to(device)
        dist = vae.encode(batch * 2 - 1).latent_dist
        zs.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(device)).float().cpu())
    std = torch.cat(zs).std().item()
    return 1.0 / max(std, 1e-8)


@torch.no_grad()
def encode_latents(*, vae: str, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                   splits: str, fold: str, output: str, cfg: dict, threads: int = 1) -> None:
    """Encode every training patch of ``fold`` once into the latent store ``output``."""
    cfg = from_dict(VaeConfig, cfg, "vae")
    configure_threads(threads)
    device = select_device(cfg.device)
    model = load_vae(vae).to(device)
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
             "latent_channels": int(mean.shape[1]), "latent_size": int(mean.shape[-1]), "vae": str(vae)}
    with atomic_path(output) as tmp:
        write_latent_store(tmp, mean, std, index, attrs)
    _log.info("fold %s: %d latents of shape %s written to %s", fold, len(mean), mean.shape[1:], output)


def _asdict(cfg) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(cfg)))
