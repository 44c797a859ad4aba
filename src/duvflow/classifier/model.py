"""The patch classifier: a timm ViT with a two-class head behind its own input normalisation.

Images enter as float RGB in [0, 1] at ``img_size``; the model normalises them with the mean/std of
the backbone's pretrained config (stored as buffers, so saved weights carry them and prediction
cannot forget them). Class 1 is malignant.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from duvflow.core.backbone import create_backbone, timm_layer_kwargs
from duvflow.core.io import read_json, write_json
from duvflow.core.labels import LABELS
from duvflow.core.runtime import autocast, ignore_sigterm, progress
from duvflow.train.checkpoint import load_weights, save_weights

__all__ = ["CLASSES", "PatchClassifier", "build_classifier", "load_classifier", "predict_probs", "save_classifier"]

_log = logging.getLogger(__name__)
CLASSES = LABELS  # output index = integer label


class PatchClassifier(nn.Module):
    """``backbone((x - mean) / std)`` -> logits for (benign, malignant)."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Malignancy probability per image (float32)."""
        return self(x).float().softmax(-1)[:, 1]


def _normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from timm.data import resolve_model_data_config

    data_cfg = resolve_model_data_config(backbone)
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


def build_classifier(name: str, *, img_size: int, weights: str | None = None, hub: bool = False,
                     model_kwargs: dict | None = None) -> PatchClassifier:
    """A fresh classifier: ``create_backbone`` (local weights file / hub / random) + 2-class head."""
    backbone = create_backbone(name, weights=weights, hub=hub, img_size=img_size, num_classes=len(CLASSES),
                               **dict(model_kwargs or {}))
    return PatchClassifier(backbone, *_normalisation(backbone))


def load_classifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[PatchClassifier, dict]:
    """The trained classifier in ``folder`` (``model.safetensors`` + ``model.json``) and its metadata."""
    import timm

    folder = Path(folder)
    weights, meta_path = folder / "model.safetensors", folder / "model.json"
    for path in (weights, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a duvflow classifier folder: {path.name} is missing")
    meta = read_json(meta_path)
    try:
        backbone = timm.create_model(meta["model"], pretrained=False, num_classes=len(CLASSES),
                                     img_size=meta["img_size"], **timm_layer_kwargs(meta.get("model_kwargs", {})))
    except KeyError as err:
        raise ValueError(f"{meta_path} lacks the entry {err}") from None
    model = PatchClassifier(backbone, meta["mean"], meta["std"])
    state = load_weights(weights)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def save_classifier(state_dict: dict, weights: str | os.PathLike, meta_path: str | os.PathLike, meta: dict) -> None:
    """Write a trained classifier as :func:`load_classifier` reads it (safetensors + JSON metadata)."""
    save_weights(state_dict, weights, metadata={"arm": str(meta.get("arm")), "fold": str(meta.get("fold")),
                                                "model": meta["model"]})
    write_json(meta, meta_path)


@torch.no_grad()
def predict_probs(model: PatchClassifier, images, *, batch_size: int, device: torch.device,
                  mixed_precision: bool = True, num_workers: int = 0, desc: str = "predict") -> np.ndarray:
    """Malignancy probability of every image of ``images`` (no augmentation), in order."""
    from torch.utils.data import DataLoader

    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    was_training = model.training
    model.eval()
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_sigterm if num_workers else None)
    out = []
    for x, _ in progress(loader, desc=desc, unit="batch", leave=False):
        with autocast(device, mixed_precision):
            out.append(model.predict_proba(x.to(device, non_blocking=True)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32)
