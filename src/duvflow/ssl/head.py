"""DINO projection head and the multi-crop wrapper (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021).

The head is an MLP (``n_layers`` linear layers with GELU, ending in a bottleneck), an L2
normalisation, and a weight-normalised linear layer to ``out_dim`` prototypes whose norm ``g`` is
fixed to 1 when ``norm_last_layer`` (the stabilising choice of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "MultiCropModel", "Normalize"]


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        n_layers = max(n_layers, 1)
        if n_layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(n_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # weight = g * v / ||v|| per prototype; g starts at 1 and stays there when norm_last_layer
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for [0, 1] images (the backbone's own statistics)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MultiCropModel(nn.Module):
    """Backbone + head over a list of crops: crops of one resolution share a forward pass.

    ``forward(crops)`` returns ``(features, logits)``: the backbone's pooled features and the head's
    outputs, both concatenated over the crops in their given order (crop-major: all images of crop 0,
    then crop 1, ...).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            batch = torch.cat(crops[start:end]) if end - start > 1 else crops[start]
            feats.append(self.backbone(self.normalize(batch)))
            start = end
        features = torch.cat(feats) if len(feats) > 1 else feats[0]
        return features, self.head(features)
