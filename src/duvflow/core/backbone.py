"""timm backbones with the project's weight-loading rules (used by DINO and the classifier).

A stage's ``init`` setting says where its initial weights come from (:func:`initial_weights`):
``pretrained`` = a local file or folder (``weights``: safetensors, or a torch/timm state dict loaded
with ``weights_only=True``) or else the Hugging Face hub by the timm name (``arch.tag`` or
``hf-hub:org/name``; the hub cache, or a download when online); ``dino`` = the fold's DINO teacher;
``random`` = random initialisation. Nothing else falls back to random: a missing weight is an
error, caught at workflow start by :mod:`duvflow.core.pretrained`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from duvflow.train.checkpoint import load_weights

__all__ = ["create_backbone", "initial_weights", "timm_layer_kwargs"]

_log = logging.getLogger(__name__)


def initial_weights(init: str, weights: str | os.PathLike | None = None,
                    teacher: str | os.PathLike | None = None) -> dict:
    """``create_backbone`` keywords (``weights``, ``hub``) for a stage's ``init`` setting."""
    if init == "pretrained":
        return {"weights": weights, "hub": not weights}
    if init == "dino":
        if not teacher:
            raise ValueError("init 'dino' needs the fold's DINO teacher (teacher.safetensors), which was not given")
        return {"weights": teacher, "hub": False}
    if init == "random":
        if weights:
            raise ValueError(f"init is 'random' but a weights file ({weights}) is set: set init: pretrained")
        return {"weights": None, "hub": False}
    raise ValueError(f"init must be pretrained, dino or random, got {init!r}")


def create_backbone(name: str, *, weights: str | os.PathLike | None = None, hub: bool = False,
                    img_size: int | None = None, num_classes: int = 0, **kwargs):
    """``timm.create_model(name)`` with weights from ``weights`` (a local file or folder) or the hub.

    ``img_size`` overrides the model's input size (position embeddings are resampled when a
    checkpoint was trained at another size); ``num_classes=0`` returns a pooled-feature backbone.
    """
    import timm

    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs = timm_layer_kwargs(kwargs)
    model = timm.create_model(name, pretrained=bool(hub and not weights), num_classes=num_classes, **kwargs)
    if weights:
        state = load_weights(_weights_file(weights))
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
    native = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if (weights or hub) and native and img_size and int(native[-1]) != int(img_size):
        _log.warning("%s was pretrained at %d px and runs at img_size %d: its position embeddings are resampled "
                     "(set img_size: %d to use the pretrained input size)", name, native[-1], img_size, native[-1])
    return model


def timm_layer_kwargs(kwargs: dict) -> dict:
    """Layer classes named in a config (``mlp_layer: SwiGLUPacked``, ``act_layer: silu``) as timm objects.

    Some pathology foundation models (UNI2-h, Virchow2) need them, and a YAML config holds only names.
    """
    import timm.layers

    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if not (key.endswith("_layer") and isinstance(value, str)):
            continue
        try:
            kwargs[key] = timm.layers.get_act_layer(value.lower()) if key == "act_layer" else getattr(timm.layers, value)
        except (AttributeError, ValueError, KeyError):
            raise ValueError(f"model_kwargs.{key}: {value!r} is not a timm.layers name (e.g. SwiGLUPacked, silu)") \
                from None
    return kwargs


def _weights_file(path: str | os.PathLike) -> Path:
    """A weights file, or the one in a folder (a hub snapshot saved with ``hf download --local-dir``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"weights folder {path} holds no model.safetensors or pytorch_model.bin "
                            f"(and not exactly one .safetensors file): point the weights setting at the file")


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
