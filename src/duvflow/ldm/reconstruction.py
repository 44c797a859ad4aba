"""The generative floor: how well the fold's autoencoder reconstructs patches it did not train on.

An LDM samples in the VAE's latent space and every sample is decoded by it, so the VAE's
reconstruction quality bounds what any LDM can reach: rFID (FID of reconstructions against the
originals, Inception-v3 as in :mod:`duvflow.ldm.fidelity`) is the floor under the LDM's FID,
and PSNR/SSIM say whether fine structure (nuclei) survives the round trip. Patches are the
fold's validation slides (held back from the VAE, never test slides); without validation
slides a seeded subset of training patches is used and the report says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from duvflow.core.config import from_dict
from duvflow.core.io import write_json
from duvflow.core.patches import PatchDataset, attach_split, load_patch_index
from duvflow.core.runtime import configure_threads, progress, select_device
from duvflow.core.splits import fold_seed
from duvflow.ldm.common import run_metadata
from duvflow.ldm.config import FidelityConfig
from duvflow.ldm.fidelity import QuantisedImages, extract_features, find_inception, frechet_distance

__all__ = ["measure_reconstruction", "psnr", "reconstruction_metrics"]

_log = logging.getLogger(__name__)


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [0, 1] images (N, C, H, W); +inf where the images are equal."""
    mse = (original.double() - reconstruction.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def reconstruction_metrics(images: Sequence[torch.Tensor], autoencode: Callable[[torch.Tensor], torch.Tensor], *,
                           inception: torch.nn.Module | None, batch_size: int, device) -> dict:
    """PSNR, SSIM and rFID of ``autoencode`` ([0, 1] batch -> [0, 1] batch) over ``images`` ([0, 1] CHW)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    originals, recons, psnrs, ssims = [], [], [], []
    for start in progress(range(0, len(images), batch_size), desc="reconstruct"):
        batch = torch.stack(list(images[start:start + batch_size])).to(device)
        # quantised to 8 bit like every patch the metrics compare (the PNGs of the synthetic sets)
        recon = (autoencode(batch).clamp(0, 1) * 255).round() / 255
        psnrs.append(psnr(batch, recon).cpu())
        ssims.append(ssim(recon.float(), batch.float(), data_range=1.0, reduction="none").double().cpu())
        originals.append(batch.cpu())
        recons.append(recon.cpu())
    if not psnrs:
        raise ValueError("no patches to reconstruct")
    values = torch.cat(psnrs)
    finite = values[torch.isfinite(values)]
    result = {"n_images": len(values), "psnr": float(finite.mean()) if len(finite) else math.inf,
              "psnr_exact_fraction": float((~torch.isfinite(values)).double().mean()),
              "ssim": float(torch.cat(ssims).mean()), "rfid": None}
    if inception is not None and len(values) >= 2:
        f_orig = extract_features(inception, torch.cat(originals), batch_size, device, "Inception originals")
        f_recon = extract_features(inception, torch.cat(recons), batch_size, device, "Inception reconstructions")
        result["rfid"] = max(0.0, frechet_distance(f_orig, f_recon))
    return result


def _held_back_patches(tables, stores, statuses, splits, fold: str, max_images: int, seed: int):
    """The fold's validation patches (not seen by the VAE), else a seeded subset of its training patches."""
    index = attach_split(load_patch_index(tables, stores, statuses), splits, fold)
    held = index[index["role"] == "val"]
    source = "validation slides (held back from the VAE)"
    if held.empty:
        held = index[index["role"] == "train"]
        source = "training patches (the fold has no validation slides: the VAE has seen them; a lower bound)"
        _log.warning("fold %s: no validation slides, reconstruction is measured on training patches", fold)
    if held.empty:
        raise ValueError(f"fold {fold} has neither validation nor training patches (splits: {splits})")
    if len(held) > max_images:
        rng = np.random.default_rng(seed)
        held = held.iloc[np.sort(rng.choice(len(held), max_images, replace=False))]
    return held.reset_index(drop=True), source


def measure_reconstruction(*, vae: str, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                           splits: str, fold: str, image_size: int, output: str, fidelity: dict, seed: int,
                           threads: int = 1) -> None:
    """rFID, PSNR and SSIM of the fold's VAE on held-back patches at the LDM resolution -> ``output`` (JSON)."""
    from duvflow.ldm.vae import decode_latents, encode_images, load_vae

    cfg = from_dict(FidelityConfig, fidelity, "fidelity")
    configure_threads(threads)
    device = select_device(cfg.device)
    index, source = _held_back_patches(tables, stores, statuses, splits, fold, cfg.max_real, fold_seed(seed, fold))
    dataset = PatchDataset(index, size=image_size)
    images = QuantisedImages(dataset)
    model = load_vae(vae).to(device).eval()

    def autoencode(batch: torch.Tensor) -> torch.Tensor:
        mean, _ = encode_images(model, batch)  # the posterior mean: the deterministic round trip
        return (decode_latents(model, mean) + 1) / 2

    inception, inception_source = find_inception(cfg.inception_weights, cfg.inception_size)
    result = reconstruction_metrics(images, autoencode, inception=inception, batch_size=cfg.batch_size, device=device)
    result.update({"fold": str(fold), "image_size": image_size, "patches": source,
                   "rfid_note": f"Inception-v3 from {inception_source}" if inception is not None else inception_source})
    _log.info("fold %s: VAE reconstruction of %d patches: rFID %s, PSNR %.2f dB, SSIM %.4f", fold,
              result["n_images"], "n/a" if result["rfid"] is None else f"{result['rfid']:.2f}", result["psnr"],
              result["ssim"])
    write_json({**result, **run_metadata()}, output)
