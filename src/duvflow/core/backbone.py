"""timm backbones with the project's weight-loading rules (used by DINO and the classifier).

Initial weights come from, in order: a local file (safetensors, or a torch/timm state dict loaded
with ``weights_only=True``); a timm hub tag when the user's machine is online
(``init: "hub"``); otherwise random initialisation. Nothing downloads unless asked for.
"""

from __future__ import annotations

import logging
import os

from duvflow.train.checkpoint import load_weights

__all__ = ["create_backbone"]

_log = logging.getLogger(__name__)


def create_backbone(name: str, *, weights: str | os.PathLike | None = None, hub: bool = False,
                    img_size: int | None = None, num_classes: int = 0, **kwargs):
    """``timm.create_model(name)`` with weights from ``weights`` (a local file) or the hub.

    ``img_size`` overrides the model's input size (position embeddings are resampled when a
    checkpoint was trained at another size); ``num_classes=0`` returns a pooled-feature backbone.
    """
    import timm

    if img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=bool(hub and not weights), num_classes=num_classes, **kwargs)
    if weights:
        state = load_weights(weights)
        state = _adapt_state_dict(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("head.")]
        if missing:
            raise ValueError(f"weights file {weights} does not fit {name}: missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            _log.warning("weights file %s: ignoring %d unexpected keys (e.g. %s)", weights, len(unexpected),
                         unexpected[:3])
        _log.info("loaded %s weights from %s", name, weights)
    elif not hub:
        _log.info("%s starts from random initialisation (no weights file configured)", name)
    return model


def _adapt_state_dict(state: dict, model) -> dict:
    """Strip common wrappers' prefixes and resample position embeddings to the model's grid."""
    for prefix in ("module.", "backbone.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    # drop a classifier head of another size (e.g. ImageNet's 1000 classes)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and k in own and own[k].shape != v.shape)}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        n_prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=model.patch_embed.grid_size,
                                                    num_prefix_tokens=n_prefix)
    return state
