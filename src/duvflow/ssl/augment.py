"""DINO multi-crop augmentation, batched on the training device.

Each image yields 2 global crops (``global_size``, area ``global_scale``) and ``n_local`` local
crops (``local_size``, area ``local_scale``), each randomly resized-cropped, flipped, rotated by
multiples of 90 degrees (tissue has no canonical orientation), colour-jittered, turned grey,
blurred and (second global crop only) solarised, with DINO's probabilities.

Why batched: per-image PIL/torchvision pipelines in DataLoader workers cost ~10 crops x batch
resamplings per step on the CPU and starve a GPU; here every operation runs on the whole batch at
once with per-image random parameters (crop-and-resize is one ``torchvision.ops.roi_align`` call),
so the workers only decode patches. Colour jitter applies brightness, contrast, saturation and hue
in this fixed order (torchvision shuffles it), fused into one affine colour map per image and
clamped once (torchvision clamps after each); hue is a rotation of the chroma plane in YIQ space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from duvflow.core.stain import stain_jitter
from duvflow.ssl.config import CropConfig, DinoAugmentConfig

__all__ = ["MultiCropAugment", "crop_resize", "random_resized_boxes"]

_GRAY = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def random_resized_boxes(sizes: torch.Tensor, scale: tuple[float, float], gen: torch.Generator,
                         ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes ``(x1, y1, x2, y2)`` for images of ``sizes`` (B, 2) = (H, W).

    Like torchvision: area fraction ~ U(scale), log aspect ~ U(log ratio), first of ``attempts``
    draws that fits; images where none fits get the largest centred box of a clamped aspect ratio.
    """
    b, device = sizes.shape[0], sizes.device
    h_img, w_img = sizes[:, 0].float(), sizes[:, 1].float()
    area = (h_img * w_img)[:, None]
    target = area * _uniform(b * attempts, *scale, gen, device).view(b, attempts)
    log_r = _uniform(b * attempts, math.log(ratio[0]), math.log(ratio[1]), gen, device).view(b, attempts)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    fits = (w <= w_img[:, None]) & (h <= h_img[:, None])
    first = torch.argmax(fits.int(), dim=1)  # index of the first fitting attempt (0 when none fits)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    ok = fits.any(dim=1)
    img_ratio = w_img / h_img
    fw = torch.where(img_ratio < ratio[0], w_img, torch.where(img_ratio > ratio[1], h_img * ratio[1], w_img))
    fh = torch.where(img_ratio < ratio[0], w_img / ratio[0], torch.where(img_ratio > ratio[1], h_img, h_img))
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    ux, uy = torch.rand(b, generator=gen, device=device), torch.rand(b, generator=gen, device=device)
    x0 = torch.where(ok, ux * (w_img - w), (w_img - w) / 2)
    y0 = torch.where(ok, uy * (h_img - h), (h_img - h) / 2)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, index: torch.Tensor | None = None,
                sampling_ratio: int | None = None) -> torch.Tensor:
    """Crop ``boxes`` (N, 4) out of ``images[index]`` (default: box i from image i) and resample each
    to ``size`` x ``size`` in one ``roi_align`` call: bilinear, ``sampling_ratio``^2 samples averaged
    per output pixel. The default takes 2 when shrinking (some anti-aliasing at a quarter of the
    cost of the adaptive ``ceil(box / size)``) and 1 otherwise (exact at 1:1)."""
    if index is None:
        index = torch.arange(images.shape[0], device=images.device)
    if sampling_ratio is None:
        extent = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        sampling_ratio = 2 if bool((extent > size + 1e-3).any()) else 1
    rois = torch.cat([index.to(images.dtype)[:, None], boxes.to(images.dtype)], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio,
                     aligned=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


class MultiCropAugment:
    """``augment(images, gen)`` -> ``[global_1, global_2, local_1, ..., local_n]``, each (B, 3, S, S).

    ``images``: float (B, 3, H, W) in [0, 1] on the training device; ``sizes`` (B, 2) gives each
    image's valid (H, W) when a batch was padded to a common size.
    """

    def __init__(self, global_size: int, crops: CropConfig | None = None, augment: DinoAugmentConfig | None = None):
        self.global_size = global_size
        self.crops = crops or CropConfig()
        self.cfg = augment or DinoAugmentConfig()

    def __call__(self, images: torch.Tensor, gen: torch.Generator, sizes: torch.Tensor | None = None):
        b, dev = images.shape[0], images.device
        if sizes is None:
            sizes = torch.tensor(images.shape[-2:], device=dev).expand(b, 2)
        c, cfg = self.crops, self.cfg
        # the crops of one size are augmented as one batch (crop-major: all of crop 0, then crop 1, ...)
        views = []
        groups = [(2, self.global_size, c.global_scale, list(cfg.blur_p_global), [0.0, cfg.solarize_p])]
        if c.n_local:
            groups.append((c.n_local, c.local_size, c.local_scale, [cfg.blur_p_local] * c.n_local, [0.0] * c.n_local))
        for n, size, scale, blur_p, solarize_p in groups:
            src = torch.arange(b, device=dev).repeat(n)
            boxes = random_resized_boxes(sizes[src], scale, gen)
            x = crop_resize(images, boxes, size, index=src)
            x = self.geometric(x, gen)
            x = stain_jitter(x, gen, space=cfg.stain, scale=cfg.stain_scale, shift=cfg.stain_shift)
            x = self.colour(x, gen)
            x = self.blur(x, torch.tensor(blur_p, device=dev).repeat_interleave(b), gen)
            sol = torch.tensor(solarize_p, device=dev).repeat_interleave(b)
            if bool((sol > 0).any()):
                on = _per_image(torch.rand(x.shape[0], generator=gen, device=dev) < sol)
                x = torch.where(on & (x >= 0.5), 1.0 - x, x)
            views.extend(x.chunk(n))
        return [v.contiguous() for v in views]

    def geometric(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random flips and 90-degree rotation, composed into one element of the dihedral group per
        image (vflip = rot180 . hflip) so each image is moved once."""
        b, dev = x.shape[0], x.device
        h = torch.rand(b, generator=gen, device=dev) < self.cfg.hflip_p
        v = torch.rand(b, generator=gen, device=dev) < self.cfg.vflip_p
        k = torch.randint(0, 4, (b,), generator=gen, device=dev) if self.cfg.rot90 else torch.zeros_like(h, dtype=torch.long)
        flip = h ^ v
        rot = (k + 2 * v.long()) % 4
        if not bool(flip.any() or rot.any()):
            return x
        out = x.clone()
        for f in (False, True):
            for r in range(4):
                sel = ((flip == f) & (rot == r)).nonzero().squeeze(1)
                if (not f and r == 0) or sel.numel() == 0:
                    continue
                y = x[sel].flip(-1) if f else x[sel]
                out[sel] = torch.rot90(y, r, dims=(-2, -1)) if r else y
        return out

    def colour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Colour jitter and greyscale as one affine colour map per image, ``A x + t``, clamped once.

        brightness b, contrast c (towards the mean grey m), saturation s and hue rotation H compose
        to ``A = c b H S`` and ``t = (1 - c) b m`` (S and H keep grey grey, so the offset passes
        through); greyscale multiplies A by the luma projection.
        """
        cfg, b, dev, dt = self.cfg, x.shape[0], x.device, x.dtype
        eye = torch.eye(3, device=dev, dtype=dt).expand(b, 3, 3)
        luma = torch.tensor(_GRAY, device=dev, dtype=dt)
        grey_proj = luma[None, :].expand(3, 3)  # every output channel = luma
        a = eye
        t = torch.zeros(b, device=dev, dtype=dt)
        if cfg.jitter_p > 0:
            on = torch.rand(b, generator=gen, device=dev) < cfg.jitter_p
            bright = torch.where(on, _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev), 1.0).to(dt)
            contrast = torch.where(on, _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev), 1.0).to(dt)
            sat = torch.where(on, _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, gen, dev), 1.0).to(dt)
            hue = torch.where(on, _uniform(b, -cfg.hue, cfg.hue, gen, dev), 0.0)
            s_mat = sat.view(b, 1, 1) * eye + (1 - sat).view(b, 1, 1) * grey_proj
            a = (contrast * bright).view(b, 1, 1) * (self._hue_matrix(hue, dev, dt) @ s_mat)
            mean = _gray(x).mean(dim=(-1, -2)).squeeze(1)
            t = (1 - contrast) * bright * mean
        if cfg.grayscale_p > 0:
            grey = torch.rand(b, generator=gen, device=dev) < cfg.grayscale_p
            a = torch.where(grey.view(b, 1, 1), grey_proj @ a, a)
        if cfg.jitter_p <= 0 and cfg.grayscale_p <= 0:
            return x
        return (torch.einsum("bij,bjhw->bihw", a, x) + t.view(b, 1, 1, 1)).clamp_(0, 1)

    @staticmethod
    def _hue_matrix(hue: torch.Tensor, device, dtype) -> torch.Tensor:
        """(B, 3, 3) RGB matrices rotating the chroma plane (I, Q of YIQ) by ``2 pi hue``."""
        t = _RGB2YIQ.to(device, torch.float64)
        theta = 2 * math.pi * hue.to(torch.float64)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(hue.shape[0], 3, 3, device=device, dtype=torch.float64)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        return (torch.linalg.inv(t) @ rot @ t).to(dtype)

    @staticmethod
    def _hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
        """Rotate each image's chroma by ``2 pi hue`` (the hue part of the colour jitter alone)."""
        return torch.einsum("bij,bjhw->bihw", MultiCropAugment._hue_matrix(hue, x.device, x.dtype), x)

    def blur(self, x: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Gaussian blur with per-image probability ``p`` (N,), sigma ~ U(blur_sigma) per image."""
        b, dev = x.shape[0], x.device
        on = torch.rand(b, generator=gen, device=dev) < p
        sigma = _uniform(b, *self.cfg.blur_sigma, gen, dev)
        idx = torch.nonzero(on).squeeze(1)
        if idx.numel() == 0:
            return x
        size = x.shape[-1]
        radius = max(1, min(math.ceil(3 * self.cfg.blur_sigma[1]), (size - 1) // 2))
        offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets[None] / sigma[idx, None].to(x.dtype)) ** 2)
        kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, K)
        sub = x[idx]
        n, ch = sub.shape[:2]
        k = kernel.repeat_interleave(ch, dim=0)  # one kernel per (image, channel) group
        y = F.pad(sub.reshape(1, n * ch, size, size), (radius, radius, radius, radius), mode="reflect")
        y = F.conv2d(y, k.view(n * ch, 1, 1, -1), groups=n * ch)
        y = F.conv2d(y, k.view(n * ch, 1, -1, 1), groups=n * ch)
        out = x.clone()
        out[idx] = y.view(n, ch, size, size)
        return out
