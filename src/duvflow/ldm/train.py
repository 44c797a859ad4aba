"""Training of the conditional latent diffusion model (one loop for the SSL and the class arm).

The denoiser is a diffusers ``UNet2DConditionModel`` whose cross-attention reads the context
tokens of :class:`~duvflow.ldm.conditioning.ConditionEncoder`; it is trained on the fold's cached
latents with the DDPM objective (epsilon or v prediction), classifier-free-guidance condition
dropout, AdamW with warm-up, an EMA of the weights (UNet and condition encoder), gradient
clipping and bf16 autocast on CUDA. The loop follows diffusers' ``train_text_to_image.py``:
seed -> models -> EMA -> optimizer -> data -> schedule -> resume -> steps -> final save.

The output folder is diffusers-loadable::

    unet/        UNet2DConditionModel (EMA weights)
    condition/   ConditionEncoder (EMA weights)
    scheduler/   DDPMScheduler config (DDIMScheduler.from_pretrained reads it too)
    ldm.json     condition kind, fold, latent shape, VAE folder, versions
    metrics.csv  loss per logged step;  samples/  grids drawn during training
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path
from duvflow.core.runtime import autocast, configure_threads, progress, seed_everything
from duvflow.core.splits import fold_seed
from duvflow.ldm.common import MetricsLog, run_metadata, save_grid, to_uint8
from duvflow.ldm.conditioning import ConditionEncoder, drop_mask
from duvflow.ldm.config import LdmConfig
from duvflow.ldm.data import StepBatches, read_latent_store
from duvflow.ldm.model import build_noise_scheduler, build_unet, guided_ddim, save_ldm
from duvflow.ldm.vae import decode_latents, load_vae
from duvflow.ssl.embed import read_embeddings
from duvflow.train.checkpoint import CheckpointManager, restore_rng_state, rng_state
from duvflow.train.distributed import (
    DistContext,
    all_reduce_gradients,
    all_reduce_mean,
    init_distributed,
    shard_tensors,
)

__all__ = [
    "CONDITIONS",
    "draw_batch",
    "train_ldm",
    "training_conditions",
    "training_step",
]

_log = logging.getLogger(__name__)
CONDITIONS = ("ssl", "class")


def training_conditions(store: dict, condition: str, embeddings: str | None) -> torch.Tensor:
    """One condition per cached latent: its patch's DINO embedding (ssl) or its label (class)."""
    index = store["index"]
    if condition == "class":
        return torch.from_numpy(index["label_int"].to_numpy(np.int64).copy())
    if condition != "ssl":
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if embeddings is None:
        raise ValueError("the SSL-conditioned LDM needs the fold's embedding table")
    meta, emb = read_embeddings(embeddings)
    key = meta[["slide_id", "patch_index"]].assign(_row=np.arange(len(meta)))
    joined = index[["slide_id", "patch_index"]].merge(key, on=["slide_id", "patch_index"], how="left")
    if joined["_row"].isna().any():
        missing = joined.loc[joined["_row"].isna(), "slide_id"].unique()
        raise ValueError(f"embedding table {embeddings} has no embedding for some latents (slides "
                         f"{', '.join(map(str, missing[:5]))}); were they made for the same fold?")
    rows = joined["_row"].to_numpy(np.int64)
    roles = meta["role"].to_numpy()[rows]
    if (roles != "train").any():
        raise ValueError(f"embedding table {embeddings} marks some of the fold's training patches as "
                         f"{sorted(set(roles) - {'train'})}: latents and embeddings disagree on the split")
    return torch.from_numpy(emb[rows])


def _grid_conditions(conds: torch.Tensor, labels: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """A fixed, label-balanced set of conditions for the progress grids."""
    rng = np.random.default_rng(seed)
    picks = []
    for lab in np.unique(labels):
        rows = np.flatnonzero(labels == lab)
        picks.append(rng.choice(rows, size=min(len(rows), -(-n // len(np.unique(labels)))), replace=False))
    rows = np.concatenate(picks)[:n]
    return conds[torch.from_numpy(rows)]


def draw_batch(mean: torch.Tensor, std: torch.Tensor, conds: torch.Tensor, rows: torch.Tensor, cfg: LdmConfig,
               generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(latents, noise, timesteps, conditions, drop mask) of one step, all drawn from ``generator``.

    Latents are sampled from the cached posterior (mean + std * eps), as when encoding on the fly.
    """
    z = mean[rows] + std[rows] * torch.randn(mean[rows].shape, generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    t = torch.randint(0, cfg.num_train_timesteps, (len(rows),), generator=generator)
    drop = drop_mask(len(rows), cfg.condition_drop, generator)
    return z, noise, t, conds[rows], drop


def training_step(unet, encoder, noise_scheduler, optimizer, lr_scheduler, ema, params, batch, cfg: LdmConfig,
                  device, ctx: DistContext | None = None) -> torch.Tensor:
    """One optimisation step (DDPM loss, clip, AdamW, schedule, EMA); returns the detached loss.

    With several processes (``ctx``), ``batch`` is this rank's shard and the gradients are
    averaged over ranks before clipping, so every rank takes the same step.
    """
    z, noise, t, c, drop = (x.to(device, non_blocking=True) for x in batch)
    noisy = noise_scheduler.add_noise(z, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else noise_scheduler.get_velocity(z, noise, t)
    with autocast(device, cfg.mixed_precision):
        context = encoder(c, drop)
        pred = unet(noisy, t, context, return_dict=False)[0]
    loss = F.mse_loss(pred.float(), target.float())
    loss.backward()
    if ctx is not None:
        all_reduce_gradients(params, ctx)
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(params)
    return loss.detach()


def train_ldm(*, latents: str, vae: str, output: str, checkpoint_dir: str, condition: str, fold: str, cfg: dict,
              seed: int, embeddings: str | None = None, threads: int = 1) -> None:
    """Train the ``condition``-conditioned LDM of ``fold`` on its latent store; writes ``output``."""
    from diffusers import DDIMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    cfg = from_dict(LdmConfig, cfg, "ldm")
    configure_threads(threads)
    seed = fold_seed(seed, fold)  # distinct per fold, shared by the two arms
    seed_everything(seed)
    # one process, or one of several under torchrun (rule gpu > 1): the batch size stays global
    ctx = init_distributed(cfg.device)
    device = ctx.device

    # data: latents are cached and scaled already; the condition comes with each latent
    store = read_latent_store(latents)
    mean, std = store["mean"], store["std"]
    conds = training_conditions(store, condition, embeddings)
    labels = store["index"]["label_int"].to_numpy()
    latent_channels, latent_size = mean.shape[1], mean.shape[-1]

    # models
    unet = build_unet(cfg, latent_channels, latent_size).to(device).train()
    encoder = ConditionEncoder(kind=condition, cross_attention_dim=cfg.cross_attention_dim,
                               num_tokens=cfg.num_tokens, embed_dim=int(conds.shape[1]) if condition == "ssl" else None,
                               null_condition=cfg.null_condition).to(device).train()
    noise_scheduler = build_noise_scheduler(cfg)
    params = [*unet.parameters(), *encoder.parameters()]
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, power=3 / 4, foreach=True)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cuda", "cpu"))
    lr_scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    generator = torch.Generator().manual_seed(seed)
    batches = StepBatches(len(mean), cfg.batch_size, seed)
    grid_conds = _grid_conditions(conds, labels, cfg.grid_size, seed)
    grid_vae = None

    # resume
    run_config = {"ldm": dataclasses.asdict(cfg), "condition": condition, "fold": fold, "seed": seed,
                  "n_latents": len(mean), "latent_shape": list(mean.shape[1:])}
    ckpt = CheckpointManager(checkpoint_dir, run_config, keep=cfg.checkpoints_keep)
    start = 0
    if (state := ckpt.load_latest()) is not None:
        unet.load_state_dict(state["unet"])
        encoder.load_state_dict(state["encoder"])
        ema.load_state_dict(state["ema"])
        ema.to(device=device)  # the checkpoint was read onto the CPU
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        start = int(state["step"])
    # only rank 0 writes (metrics, grids, checkpoints, the output)
    metrics = MetricsLog(Path(checkpoint_dir) / "metrics.csv", ["step", "loss", "lr"], start) if ctx.is_main else None
    grids = Path(checkpoint_dir) / "samples"

    def draw_grid(step: int) -> None:
        nonlocal grid_vae
        grid_vae = grid_vae or load_vae(vae).to(device)
        ema.store(params)
        ema.copy_to(params)
        unet.eval()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(grid_conds), latent_channels, latent_size, latent_size), generator=g)
        sampler = DDIMScheduler.from_config(noise_scheduler.config)
        with torch.no_grad(), autocast(device, cfg.mixed_precision):
            z = guided_ddim(unet, encoder(grid_conds.to(device)), encoder.null(len(grid_conds)), noise.to(device),
                            sampler, steps=cfg.grid_steps, guidance=cfg.grid_guidance)
            images = to_uint8(decode_latents(grid_vae, z.float()))
        save_grid(images, grids / f"step-{step:08d}.png")
        unet.train()
        ema.restore(params)

    # step loop
    running, n_running = 0.0, 0
    bar = progress(range(start, cfg.steps), total=cfg.steps, initial=start, desc=f"LDM {condition} fold {fold}")
    for step in bar:
        # every rank draws the global batch (same generator) and trains on its shard of it
        batch = shard_tensors(draw_batch(mean, std, conds, batches(step), cfg, generator), ctx)
        loss = training_step(unet, encoder, noise_scheduler, optimizer, lr_scheduler, ema, params, batch, cfg,
                             device, ctx)
        done = step + 1
        running, n_running = running + all_reduce_mean(loss).item(), n_running + 1
        if not ctx.is_main:  # every rank holds the same weights
            continue
        if done % cfg.log_every == 0 or done == cfg.steps:
            metrics.log(step=done, loss=running / n_running, lr=lr_scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            running, n_running = 0.0, 0
        if cfg.grid_every and done % cfg.grid_every == 0 and done < cfg.steps:
            draw_grid(done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            ckpt.save(done, {"unet": unet.state_dict(), "encoder": encoder.state_dict(), "ema": ema.state_dict(),
                             "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                             "generator": generator.get_state(), "rng": rng_state()})

    # final save with the EMA weights
    if not ctx.is_main:
        return
    if cfg.grid_every:
        draw_grid(cfg.steps)
    ema.copy_to(params)
    meta = run_metadata(condition=condition, fold=str(fold), steps=cfg.steps, latent_channels=latent_channels,
                        latent_size=latent_size, image_size=int(store["attrs"].get("image_size", 0)),
                        scaling_factor=float(store["attrs"].get("scaling_factor", 1.0)), vae=str(vae),
                        n_latents=len(mean), ldm=dataclasses.asdict(cfg))
    with atomic_path(output, suffix="") as tmp:
        save_ldm(tmp, unet, encoder, noise_scheduler, meta)
        shutil.copyfile(metrics.path, tmp / "metrics.csv")
        if grids.is_dir():
            shutil.copytree(grids, tmp / "samples")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: the resumable state is no longer needed
    _log.info("LDM %s fold %s: %d steps done, saved to %s", condition, fold, cfg.steps, output)


