"""Context tokens for the denoiser's cross-attention: SSL embeddings or class labels.

One module serves both arms of the comparison (``kind="ssl"`` or ``kind="class"``):

* ``ssl``: the patch's DINO embedding is L2-normalised and linearly projected to ``num_tokens``
  tokens of ``cross_attention_dim`` (Graikos et al., "Learned representation-guided diffusion
  models for large-image generation", CVPR 2024).
* ``class``: a learned embedding per class (benign / malignant) gives the same tokens.

For classifier-free guidance (Ho & Salimans, 2022) the condition of a random subset of the
batch is replaced by the null condition: zero tokens, or a learned null token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["ConditionEncoder", "drop_mask"]


class ConditionEncoder(ModelMixin, ConfigMixin):
    """Maps a batch of conditions to (B, num_tokens, cross_attention_dim) context tokens.

    ``kind="ssl"`` takes float embeddings (B, embed_dim); ``kind="class"`` takes integer labels
    (B,). ``forward(cond, drop=mask)`` swaps in the null condition where ``mask`` is True.
    """

    @register_to_config
    def __init__(self, kind: str = "ssl", cross_attention_dim: int = 512, num_tokens: int = 1,
                 embed_dim: int | None = None, num_classes: int = 2, null_condition: str = "zeros"):
        super().__init__()
        if kind == "ssl":
            if not embed_dim:
                raise ValueError("an SSL condition encoder needs the embedding dimension (embed_dim)")
            self.proj = nn.Linear(embed_dim, num_tokens * cross_attention_dim)
        elif kind == "class":
            self.proj = nn.Embedding(num_classes, num_tokens * cross_attention_dim)
        else:
            raise ValueError(f"condition kind must be 'ssl' or 'class', got {kind!r}")
        if null_condition == "learned":
            self.null_tokens = nn.Parameter(torch.randn(num_tokens, cross_attention_dim) * 0.02)
        elif null_condition == "zeros":
            self.register_buffer("null_tokens", torch.zeros(num_tokens, cross_attention_dim), persistent=False)
        else:
            raise ValueError(f"null_condition must be 'zeros' or 'learned', got {null_condition!r}")

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if cfg.kind == "ssl":
            # normalised first: DINO embeddings vary in norm, their direction carries the content
            tokens = self.proj(F.normalize(cond.float(), dim=-1))
        else:
            tokens = self.proj(cond.long())
        tokens = tokens.view(-1, cfg.num_tokens, cfg.cross_attention_dim)
        if drop is not None:
            tokens = torch.where(drop.view(-1, 1, 1), self.null_tokens.to(tokens.dtype), tokens)
        return tokens

    def null(self, batch_size: int) -> torch.Tensor:
        """The unconditional context for ``batch_size`` samples."""
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)


def drop_mask(batch_size: int, p: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Bernoulli(p) mask choosing which samples train unconditionally (CFG condition drop)."""
    if p <= 0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return (torch.rand(batch_size, generator=generator) < p).to(device)
