"""The synthetic patch folder, sampled from a trained LDM with guided DDIM (:mod:`duvflow.ldm.model`).

The synthetic folder ``synthetic/{cond}/fold_{fold}/`` holds PNG patches at the LDM resolution
and ``manifest.parquet`` (``file`` relative to the folder, ``label``, ``source_slide``,
``source_patch``, ``seed``, ``guidance``, ``steps``, ``condition``, ``fold``). Conditions of the SSL
arm are DINO embeddings of real training patches of the fold, drawn stratified by label; the
class arm draws the same plan and is conditioned on the labels only (its source columns name the
real training patch the label was drawn from). Image i starts from the noise of seed
``seed + i`` in both arms, so the arms are paired; the folder is deterministic given the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_parquet
from duvflow.core.patches import LABEL_TO_INT
from duvflow.core.runtime import autocast, configure_threads, progress, select_device
from duvflow.core.splits import fold_seed
from duvflow.core.synthetic import label_quota, synthetic_count
from duvflow.ldm.common import run_metadata, to_uint8
from duvflow.ldm.config import SamplingConfig
from duvflow.ldm.data import read_latent_store
from duvflow.ldm.model import guided_ddim, load_ldm
from duvflow.ldm.vae import decode_latents, load_vae
from duvflow.ssl.embed import read_embeddings

__all__ = ["plan_synthetic", "sample_images", "sample_synthetic", "synthetic_count"]

_log = logging.getLogger(__name__)
INT_TO_LABEL = {v: k for k, v in LABEL_TO_INT.items()}
MANIFEST = "manifest.parquet"


def plan_synthetic(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of the real training patches whose conditions the ``n`` synthetic patches use.

    Stratified by label: each label gets its share of the real training set (largest remainder,
    :func:`duvflow.core.synthetic.label_quota`), drawn without replacement (a label with fewer patches
    than needed is cycled through again). The smaller sets of a fraction sweep are the first rows of
    each label of this plan (:func:`duvflow.core.synthetic.nested_subset`).
    """
    labels = np.asarray(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    classes, per_class = label_quota(labels, n)
    rng = np.random.default_rng(seed)
    rows = []
    for lab, k in zip(classes, per_class, strict=True):
        pool = np.flatnonzero(labels == lab)
        draws = [rng.permutation(pool) for _ in range(-(-k // len(pool)))] if k else []
        rows.append(np.concatenate(draws)[:k] if draws else np.zeros(0, np.int64))
    return np.concatenate(rows).astype(np.int64)


@torch.no_grad()
def sample_images(unet, encoder, vae, scheduler, conditions: torch.Tensor, seeds, *, steps: int, guidance: float,
                  eta: float = 0.0, latent_shape: tuple[int, int, int], device, mixed_precision: bool = True) -> np.ndarray:
    """uint8 (B, H, W, 3) samples for a batch of conditions; sample i starts from seed ``seeds[i]``."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(latent_shape, generator=g) for g in gens]).to(device)
    with autocast(device, mixed_precision):
        context = encoder(conditions.to(device))
        z = guided_ddim(unet, context, encoder.null(len(conditions)), noise, scheduler, steps, guidance, eta,
                        generator=gens if eta > 0 else None)
        images = decode_latents(vae, z.to(vae.dtype))
    return to_uint8(images)


def sample_synthetic(*, model: str, vae: str, latents: str, output: str, condition: str, fold: str, sampling: dict,
                     seed: int, embeddings: str | None = None, guidance: float | None = None,
                     threads: int = 1) -> None:
    """Write the synthetic patch folder ``output`` for one arm and fold.

    ``guidance`` (a guidance sweep's value) overrides the first configured scale; the plan and the noise
    do not depend on it, so sets of one fold at different scales are paired image by image.
    """
    from PIL import Image

    cfg = from_dict(SamplingConfig, sampling, "sampling")
    guidance = cfg.guidance_values[0] if guidance is None else float(guidance)
    configure_threads(threads)
    seed = fold_seed(seed, fold)  # the same plan and noise in both arms
    device = select_device(cfg.device)
    unet, encoder, scheduler, meta = load_ldm(model, device)
    if encoder.config.kind != condition:
        raise ValueError(f"LDM {model} is conditioned on {encoder.config.kind!r}, not {condition!r}")
    decoder = load_vae(vae).to(device)

    # the real training patches of the fold, in latent-store order (the plan is arm-independent)
    real = read_latent_store(latents, arrays=False)["index"]
    n_syn = synthetic_count(len(real), cfg.largest_fraction)
    if cfg.max_synthetic is not None and n_syn > cfg.max_synthetic:
        _log.warning("capping %d synthetic patches at sampling.max_synthetic = %d", n_syn, cfg.max_synthetic)
        n_syn = cfg.max_synthetic
    rows = plan_synthetic(real["label_int"].to_numpy(), n_syn, seed)
    source = real.iloc[rows].reset_index(drop=True)
    if condition == "ssl":
        if embeddings is None:
            raise ValueError("SSL sampling needs the fold's embedding table")
        emb_meta, emb = read_embeddings(embeddings, role="train")
        lookup = pd.Series(np.arange(len(emb_meta)), index=pd.MultiIndex.from_frame(emb_meta[["slide_id", "patch_index"]]))
        keys = pd.MultiIndex.from_frame(source[["slide_id", "patch_index"]])
        missing = ~keys.isin(lookup.index)
        if missing.any():
            raise ValueError(f"embedding table {embeddings} lacks {int(missing.sum())} training patches of fold {fold}")
        conditions = torch.from_numpy(emb[lookup.loc[keys].to_numpy()])
    else:
        conditions = torch.from_numpy(source["label_int"].to_numpy(np.int64).copy())
    seeds = seed + np.arange(n_syn)
    latent_shape = (meta["latent_channels"], meta["latent_size"], meta["latent_size"])
    _log.info("fold %s, %s arm: %d synthetic patches for %d real training patches (fraction %.3f), %d DDIM steps, "
              "guidance %.2f", fold, condition, n_syn, len(real), cfg.largest_fraction, cfg.steps, guidance)

    files = [f"syn_{i:06d}.png" for i in range(n_syn)]
    with atomic_path(output, suffix="") as tmp:
        tmp.mkdir()
        for start in progress(range(0, n_syn, cfg.batch_size), desc=f"sample {condition} fold {fold}"):
            sl = slice(start, start + cfg.batch_size)
            images = sample_images(unet, encoder, decoder, scheduler, conditions[sl], seeds[sl], steps=cfg.steps,
                                   guidance=guidance, eta=cfg.eta, latent_shape=latent_shape, device=device,
                                   mixed_precision=cfg.mixed_precision)
            for name, img in zip(files[sl], images, strict=True):
                Image.fromarray(img).save(tmp / name, format="PNG")
        manifest = pd.DataFrame({
            "file": files,
            "label": source["label_int"].map(INT_TO_LABEL).to_numpy(),
            "source_slide": source["slide_id"].astype(str).to_numpy(),
            "source_patch": source["patch_index"].astype("int64").to_numpy(),
            "seed": seeds.astype(np.int64),
            "guidance": guidance,
            "steps": int(cfg.steps),
            "condition": condition,
            "fold": str(fold),
        })
        write_parquet(manifest, Path(tmp) / MANIFEST, metadata={
            # n_requested: what this folder must hold (duvflow.evaluate.flags checks it)
            "n_real": len(real), "synthetic_fraction": cfg.largest_fraction, "n_requested": n_syn, "model": str(model),
            "image_size": meta.get("image_size"), **{k: v for k, v in run_metadata().items()}})
    _log.info("wrote %d synthetic patches to %s", n_syn, output)
