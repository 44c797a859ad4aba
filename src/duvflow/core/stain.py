"""Stain augmentation: random per-image changes of each stain's amount, batched in torch.

Bright-field (``space="hed"``): the RGB image is converted to optical density (Beer-Lambert),
unmixed into haematoxylin, eosin and DAB concentrations with Ruifrok & Johnston's stain vectors
(the matrix of ``skimage.color.rgb2hed``), each concentration is scaled by ``alpha ~ U(1 +- scale)``
and shifted by ``beta ~ U(+- shift)``, and the result is mixed back (Tellez et al., "Whole-slide
mitosis detection in H&E breast histology using PHH3 as a reference", IEEE TMI 2018; the HED
augmentation of Tellez et al., MedIA 2019). Dark-field fluorescence (``space="fluorescence"``,
e.g. DUV images): emitted intensity is proportional to each dye's concentration, with no
logarithm, so the same scale-and-shift applies to the linear intensity of each dye channel,
unmixed with ``dye_colours`` (rows: the RGB emission colour of each dye; default: one dye per
channel). Both are one affine map per image, so a batch costs two small matrix products.

Every random number comes from the given ``generator`` on the images' device; with
``space="none"`` nothing is drawn, so turning the augmentation off leaves other draws unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["RGB_FROM_HED", "STAIN_SPACES", "hed_to_rgb", "rgb_to_hed", "stain_jitter"]

STAIN_SPACES = ("none", "hed", "fluorescence")
# skimage.color's stain vectors (rows: haematoxylin, eosin, DAB as RGB optical densities)
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_EPS = 1e-6  # skimage's floor of the intensity before the logarithm


def _matrices(rows, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mix = torch.as_tensor(rows, dtype=torch.float64)
    return mix.to(device, dtype), torch.linalg.inv(mix).to(device, dtype)


def _od(rgb: torch.Tensor) -> torch.Tensor:
    """Optical density as skimage scales it: log(I) / log(eps), 0 (white) .. 1 (I = eps)."""
    return torch.log(rgb.clamp_min(_EPS)) / torch.log(torch.tensor(_EPS, dtype=rgb.dtype))


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> stain concentrations (B, 3, H, W), as ``skimage.color.rgb2hed``."""
    _, unmix = _matrices(RGB_FROM_HED, rgb.device, rgb.dtype)
    return torch.einsum("bchw,cs->bshw", _od(rgb), unmix).clamp_min(0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Stain concentrations -> RGB in [0, 1] (the inverse of :func:`rgb_to_hed` for stainable colours)."""
    mix, _ = _matrices(RGB_FROM_HED, hed.device, hed.dtype)
    od = torch.einsum("bshw,sc->bchw", hed, mix)
    return torch.exp(od * torch.log(torch.tensor(_EPS, dtype=hed.dtype))).clamp(0, 1)


def stain_jitter(images: torch.Tensor, generator: torch.Generator, *, space: str = "hed", scale: float = 0.05,
                 shift: float = 0.005, dye_colours=None) -> torch.Tensor:
    """Randomly rescale and shift each stain of each image of a float (B, 3, H, W) batch in [0, 1].

    ``scale``/``shift``: alpha ~ U(1 - scale, 1 + scale), beta ~ U(-shift, shift) per image and
    stain (shift in units of the stain space: skimage's HED scale, optical density / ln(1e6), for
    ``hed``, where H&E concentrations are ~0.01-0.15 and the defaults are Tellez et al.'s "HED-light";
    intensity for ``fluorescence``). Returns a new tensor; ``space="none"`` returns ``images``.
    """
    if space not in STAIN_SPACES:
        raise ValueError(f"stain space must be one of {', '.join(STAIN_SPACES)}, got {space!r}")
    if space == "none" or (scale == 0 and shift == 0):
        return images
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"stain_jitter takes (B, 3, H, W) RGB batches, got shape {tuple(images.shape)}")
    b, dev, dt = images.shape[0], images.device, images.dtype
    work = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    alpha = 1 + scale * (2 * torch.rand(b, 3, generator=generator, device=dev) - 1)
    beta = shift * (2 * torch.rand(b, 3, generator=generator, device=dev) - 1)
    rows = RGB_FROM_HED if space == "hed" else (dye_colours if dye_colours is not None else torch.eye(3))
    mix, unmix = _matrices(rows, dev, work)
    # x -> ((x unmix) * alpha + beta) mix = x A + t, with A = unmix diag(alpha) mix and t = beta mix
    a = unmix[None] @ (alpha.to(work)[:, :, None] * mix[None])
    t = beta.to(work) @ mix
    x = images.to(work)
    signal = _od(x) if space == "hed" else x
    out = torch.einsum("bchw,bcd->bdhw", signal, a) + t[:, :, None, None]
    if space == "hed":
        out = torch.exp(out.clamp_min(0) * torch.log(torch.tensor(_EPS, dtype=work, device=dev)))
    return out.clamp(0, 1).to(dt)
