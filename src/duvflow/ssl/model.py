"""The SSL backbone: built from the ``dino`` config, saved as the teacher, loaded back by later stages.

``teacher.safetensors`` is a plain timm state dict of the backbone (no head), so any stage can
rebuild it with :func:`duvflow.core.backbone.create_backbone`; ``teacher.json`` holds everything needed
for that (timm name, timm kwargs incl. pooling, input size, normalisation). Use :func:`load_teacher`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from duvflow.core.backbone import create_backbone
from duvflow.core.io import read_json
from duvflow.ssl.head import Normalize

__all__ = ["POOLING", "Embedder", "backbone_kwargs", "build_backbone", "data_stats", "fingerprint", "load_teacher"]

_log = logging.getLogger(__name__)
POOLING = {"cls": "token", "mean": "avg"}  # config name -> timm global_pool


def backbone_kwargs(model_kwargs: dict, pooling: str) -> dict:
    """timm kwargs of the SSL backbone: user kwargs + pooling + variable input size (multi-crop)."""
    if pooling not in POOLING:
        raise ValueError(f"dino.pooling must be one of {sorted(POOLING)}, got {pooling!r}")
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("dynamic_img_size", True)  # local crops are smaller than global ones
    kwargs["global_pool"] = POOLING[pooling]
    return kwargs


def build_backbone(name: str, *, model_kwargs: dict, pooling: str, img_size: int, weights: str | None,
                   hub: bool, seed: int, drop_path_rate: float = 0.0) -> nn.Module:
    """The initial backbone. Random initialisation is drawn from ``seed`` alone, so every fold's DINO
    run and the "before fine-tuning" probe baseline start from the same network."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = create_backbone(name, weights=weights, hub=hub, img_size=img_size, drop_path_rate=drop_path_rate,
                                **backbone_kwargs(model_kwargs, pooling))
    finally:
        torch.set_rng_state(state)
    return model


def data_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """Input normalisation (mean, std) the backbone was (pre)trained with."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


class Embedder(nn.Module):
    """[0, 1] images at ``img_size`` -> pooled backbone features (normalisation included)."""

    def __init__(self, backbone: nn.Module, mean, std, img_size: int):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.img_size = img_size

    @property
    def dim(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


@torch.no_grad()
def fingerprint(model: Embedder) -> list[float]:
    """The model's embedding of a fixed synthetic image, computed on the CPU in float32.

    Stored in ``teacher.json`` at training time and checked by :func:`load_teacher`, so a teacher
    rebuilt with another config or timm version that silently computes something else is caught.
    """
    size = model.img_size
    ramp = torch.linspace(0, 1, size)
    image = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                         0.5 + 0.5 * torch.sin(12 * ramp)[None, :] * torch.cos(9 * ramp)[:, None]])[None]
    device = next(model.parameters()).device
    was_training = model.training
    model.cpu().eval()
    out = model(image)[0].tolist()
    model.to(device).train(was_training)
    return out


def load_teacher(weights: str | os.PathLike, config: str | os.PathLike | None = None) -> tuple[Embedder, dict]:
    """Rebuild a DINO teacher from ``teacher.safetensors`` (+ ``teacher.json`` beside it by default)."""
    weights = Path(weights)
    config = Path(config) if config else weights.with_suffix(".json")
    if not config.is_file():
        raise FileNotFoundError(f"teacher config {config} does not exist (written next to {weights} by train_dino)")
    meta = read_json(config)
    backbone = create_backbone(meta["backbone"], weights=weights, img_size=meta["img_size"], **meta["model_kwargs"])
    model = Embedder(backbone, meta["mean"], meta["std"], meta["img_size"]).eval()
    if "fingerprint" in meta:
        expected = torch.tensor(meta["fingerprint"])
        got = torch.tensor(fingerprint(model))
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
            raise ValueError(f"teacher {weights} does not reproduce the embedding it gave at training time "
                             f"(max difference {(got - expected).abs().max() if got.shape == expected.shape else 'shape'}"
                             f"); was {config} edited, or did the timm version change?")
    return model, meta
