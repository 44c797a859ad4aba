"""Training of the latent diffusion stage: the fold's VAE (:func:`train_vae`) and its conditional
LDMs (:func:`train_ldm`, one loop for the SSL and the class arm), both on the training harness
(:class:`duvflow.train.harness.TrainingRun`: seed, devices, resume, metrics, checkpoints).

The LDM (:mod:`duvflow.ldm.model`) is trained on the fold's cached latents with the DDPM objective
(epsilon or v prediction), classifier-free-guidance condition dropout, AdamW with warm-up, an EMA
of the weights (UNet and condition encoder), gradient clipping and bf16 autocast on CUDA, in the
order of diffusers' ``train_text_to_image.py``: seed -> models -> EMA -> optimizer -> data ->
schedule -> resume -> steps -> final save. Its output folder is the model folder plus
``metrics.csv`` (loss per logged step) and ``samples/`` (grids drawn during training).

Data-parallel runs (rule ``gpu`` > 1): every rank draws the same global batch (or loads its shard
of it), gradients are averaged over ranks before clipping, and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
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
from duvflow.core.runtime import autocast, configure_threads, progress
from duvflow.core.splits import fold_seed
from duvflow.ldm.common import run_metadata, save_grid, to_uint8
from duvflow.ldm.conditioning import ConditionEncoder, drop_mask
from duvflow.ldm.config import LdmConfig, VaeConfig
from duvflow.ldm.data import fold_training_patches, read_latent_store
from duvflow.ldm.model import build_noise_scheduler, build_unet, guided_ddim, save_ldm
from duvflow.ldm.vae import REFERENCE_FILE, build_vae, decode_latents, load_vae
from duvflow.ssl.embed import read_embeddings
from duvflow.train.batches import StepBatches
from duvflow.train.distributed import (
    DistContext,
    all_reduce_gradients,
    all_reduce_mean,
    shard_batches,
    shard_tensors,
)
from duvflow.train.harness import TrainingRun

__all__ = ["CONDITIONS", "draw_batch", "train_ldm", "train_vae", "training_conditions", "training_step"]

_log = logging.getLogger(__name__)
CONDITIONS = ("ssl", "class")
LDM_METRICS = ("step", "loss", "lr")
VAE_METRICS = ("step", "loss", "recon", "kl", "lr")
# the batch order's seed: a stream apart from the step generator's (seeded with the run seed)
BATCH_SEED_STRIDE = 100_003


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


class _ProgressGrids:
    """Sample grids drawn with the EMA weights while training (``<checkpoint folder>/samples/``)."""

    def __init__(self, vae: str, conds: torch.Tensor, labels: np.ndarray, folder: Path, cfg: LdmConfig,
                 noise_scheduler, seed: int, latent_shape: tuple[int, int, int], run: TrainingRun):
        self.vae_path, self.folder, self.cfg, self.seed, self.run = vae, folder, cfg, seed, run
        self.conds = _grid_conditions(conds, labels, cfg.grid_size, seed)
        self.noise_scheduler, self.latent_shape, self._vae = noise_scheduler, latent_shape, None

    def __call__(self, step: int, unet, encoder, ema, params) -> None:
        from diffusers import DDIMScheduler

        device = self.run.device
        self._vae = self._vae or load_vae(self.vae_path).to(device)
        ema.store(params)
        ema.copy_to(params)
        unet.eval()
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((len(self.conds), *self.latent_shape), generator=g)
        sampler = DDIMScheduler.from_config(self.noise_scheduler.config)
        with torch.no_grad(), self.run.autocast():
            z = guided_ddim(unet, encoder(self.conds.to(device)), encoder.null(len(self.conds)), noise.to(device),
                            sampler, steps=self.cfg.grid_steps, guidance=self.cfg.grid_guidance)
            images = to_uint8(decode_latents(self._vae, z.float()))
        save_grid(images, self.folder / f"step-{step:08d}.png")
        unet.train()
        ema.restore(params)


def train_ldm(*, latents: str, vae: str, output: str, checkpoint_dir: str, condition: str, fold: str, ldm: dict,
              seed: int, embeddings: str | None = None, threads: int = 1) -> None:
    """Train the ``condition``-conditioned LDM of ``fold`` on its latent store; writes ``output``."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    cfg = from_dict(LdmConfig, ldm, "ldm")
    seed = fold_seed(seed, fold)  # distinct per fold, shared by the two arms
    # data: latents are cached and scaled already; the condition comes with each latent
    store = read_latent_store(latents)
    mean, std = store["mean"], store["std"]
    conds = training_conditions(store, condition, embeddings)
    latent_shape = tuple(mean.shape[1:])
    run = TrainingRun("ldm", cfg, checkpoint_dir=checkpoint_dir, seed=seed, threads=threads,
                      metric_columns=LDM_METRICS,
                      identity={"condition": condition, "fold": fold, "seed": seed, "n_latents": len(mean),
                                "latent_shape": list(latent_shape)})
    device = run.device

    # models, EMA, optimizer, schedule
    unet = build_unet(cfg, latent_shape[0], latent_shape[-1]).to(device).train()
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
    batches = StepBatches(len(mean), cfg.batch_size, seed * BATCH_SEED_STRIDE)
    grids = _ProgressGrids(vae, conds, store["index"]["label_int"].to_numpy(), run.folder / "samples", cfg,
                           noise_scheduler, seed, latent_shape, run)
    run.track(unet=unet, encoder=encoder, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
              generator=generator)
    run.resume()

    running, n_running = 0.0, 0
    bar = progress(total=cfg.steps, initial=run.start, desc=f"LDM {condition} fold {fold}")
    for step, rows in run.steps(cfg.steps, map(batches, range(run.start, cfg.steps))):
        # every rank draws the global batch (same generator) and trains on its shard of it
        batch = shard_tensors(draw_batch(mean, std, conds, rows, cfg, generator), run.ctx)
        loss = training_step(unet, encoder, noise_scheduler, optimizer, lr_scheduler, ema, params, batch, cfg,
                             device, run.ctx)
        done = step + 1
        running, n_running = running + all_reduce_mean(loss).item(), n_running + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            run.log(step=done, loss=running / n_running, lr=lr_scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            running, n_running = 0.0, 0
        if run.is_main and cfg.grid_every and done % cfg.grid_every == 0 and done < cfg.steps:
            grids(done, unet, encoder, ema, params)
    bar.close()

    # final save with the EMA weights (every rank holds the same; rank 0 writes)
    if not run.is_main:
        return
    if cfg.grid_every:
        grids(cfg.steps, unet, encoder, ema, params)
    ema.copy_to(params)
    meta = run_metadata(condition=condition, fold=str(fold), steps=cfg.steps, latent_channels=latent_shape[0],
                        latent_size=latent_shape[-1], image_size=int(store["attrs"].get("image_size", 0)),
                        scaling_factor=float(store["attrs"].get("scaling_factor", 1.0)), vae=str(vae),
                        n_latents=len(mean), ldm=dataclasses.asdict(cfg))
    with atomic_path(output, suffix="") as tmp:
        save_ldm(tmp, unet, encoder, noise_scheduler, meta)
        run.write_metrics(tmp / "metrics.csv")
        if grids.folder.is_dir():
            shutil.copytree(grids.folder, tmp / "samples")
    run.finish()
    _log.info("LDM %s fold %s: %d steps done, saved to %s", condition, fold, cfg.steps, output)


# --------------------------------------------------------------------------------- the VAE


def _asdict(cfg) -> dict:
    """The config as plain JSON values (tuples as lists), as stored in metadata."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _reference_pretrained(cfg: VaeConfig, fold: str, output: str | os.PathLike) -> None:
    """The fold's VAE folder for a configured pretrained VAE: a reference to it, loaded once to fail
    now rather than in a later rule."""
    vae = load_vae(cfg.pretrained, cfg)
    scaling = cfg.scaling_factor or vae.config.scaling_factor
    with atomic_path(output, suffix="") as tmp:
        tmp.mkdir()
        source = cfg.pretrained if is_hub_repo_id(cfg.pretrained) else str(Path(cfg.pretrained).resolve())
        write_json({"path": source, "scaling_factor": scaling,
                    "vae_config": _asdict(cfg), **run_metadata(fold=fold)}, tmp / REFERENCE_FILE)
    _log.info("fold %s uses the pretrained VAE %s (scaling factor %.5f)", fold, cfg.pretrained, scaling)


def _vae_step(vae, images: torch.Tensor, generator: torch.Generator, optimizer, lr_scheduler, cfg: VaeConfig,
              run: TrainingRun) -> torch.Tensor:
    """One optimisation step on this rank's shard; returns the detached (loss, recon, KL per pixel)."""
    ctx = run.ctx
    offset = ctx.rank * (cfg.batch_size // ctx.world_size)
    images = images.to(run.device)
    if cfg.augment:
        images = _augment(images, generator, offset, cfg.batch_size)
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    # the posterior noise of the global batch, from the shared generator; this rank's part of it
    eps = torch.randn((cfg.batch_size, *posterior.mean.shape[1:]), generator=generator)
    z = posterior.mean + posterior.std * eps[offset:offset + len(x)].to(run.device)
    recon = vae.decode(z).sample
    rec = F.l1_loss(recon, x) if cfg.recon_loss == "l1" else F.mse_loss(recon, x)
    # LDM's weighting: kl_weight multiplies the KL against the per-image *summed* reconstruction
    kl = posterior.kl().mean() / (3 * cfg.image_size**2)
    loss = rec + cfg.kl_weight * kl
    loss.backward()
    params = list(vae.parameters())
    all_reduce_gradients(params, ctx)  # equal shards: the mean of rank means is the global mean
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([loss, rec, kl]).detach().float()


def train_vae(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None, splits: str,
              fold: str, output: str, checkpoint_dir: str, vae: dict, seed: int, threads: int = 1) -> None:
    """Train (or reference a pretrained) VAE for ``fold``; writes the folder ``output``.

    Under torchrun (rule ``gpu`` > 1) each process trains on its contiguous shard of every global
    batch (``batch_size`` stays global), gradients are averaged over ranks before clipping, and
    only rank 0 writes metrics, checkpoints and the output.
    """
    from diffusers.optimization import get_scheduler

    cfg = from_dict(VaeConfig, vae, "vae")
    if cfg.pretrained:
        configure_threads(threads)
        _reference_pretrained(cfg, fold, output)
        return
    seed = fold_seed(seed, fold)
    dataset = PatchDataset(fold_training_patches(tables, stores, statuses, splits, fold), size=cfg.image_size)
    run = TrainingRun("vae", cfg, checkpoint_dir=checkpoint_dir, seed=seed, threads=threads,
                      metric_columns=VAE_METRICS, identity={"fold": fold, "seed": seed, "n_patches": len(dataset)})
    model = build_vae(cfg).to(run.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    generator = torch.Generator().manual_seed(seed)
    run.track(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, generator=generator)
    run.resume()

    # every rank walks the same global batches and loads only its shard of each
    order = StepBatches(len(dataset), cfg.batch_size, seed * BATCH_SEED_STRIDE)
    loader = run.loader(dataset, shard_batches(order.sampler(run.start, cfg.steps), run.ctx),
                        num_workers=cfg.num_workers, seed=seed)
    batches = progress(loader, total=cfg.steps - run.start, desc=f"VAE fold {fold}")
    for step, (images, _, _) in run.steps(cfg.steps, batches):
        values = _vae_step(model, images, generator, optimizer, lr_scheduler, cfg, run)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            loss, rec, kl = all_reduce_mean(values, run.ctx).tolist()  # every rank joins
            run.log(step=done, loss=loss, recon=rec, kl=kl * 3 * cfg.image_size**2, lr=lr_scheduler.get_last_lr()[0])

    if not run.is_main:  # every rank holds the same weights; rank 0 writes
        return
    model.eval().requires_grad_(False)
    scaling = cfg.scaling_factor or _estimate_scaling(model, dataset, cfg, seed, run.device)
    model.register_to_config(scaling_factor=float(scaling))
    with atomic_path(output, suffix="") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_json(run_metadata(fold=fold, n_patches=len(dataset), steps=cfg.steps, vae=_asdict(cfg)),
                   tmp / "duvflow_vae.json")
        run.write_metrics(tmp / "metrics.csv")
    run.finish()
    _log.info("VAE fold %s trained for %d steps; scaling factor %.5f", fold, cfg.steps, scaling)


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
