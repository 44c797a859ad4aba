"""Model files and resumable training checkpoints.

* Final models are safetensors (``save_weights`` / ``load_weights``) with a JSON side-car config.
* Training checkpoints (``checkpoint-<step>.pt`` in a run folder) hold model, optimizer, schedule
  and RNG state; they are loaded with ``torch.load(weights_only=True)``, so they may contain only
  tensors and plain Python containers. The newest one is resumed automatically when its saved
  run config equals the current one (a SLURM time-out simply continues); otherwise it is ignored
  with a warning and training starts afresh.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

from duvflow.core.io import atomic_path

__all__ = ["CheckpointManager", "load_torch_file", "load_weights", "restore_rng_state", "rng_state", "save_weights"]

_log = logging.getLogger(__name__)
_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_weights(state_dict: dict, target: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Atomically save a state dict as safetensors (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a state dict from safetensors, or from a torch file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=device)
        except SafetensorError as err:
            raise ValueError(f"{path} is not a valid safetensors file ({err}); it was cut short or is not a "
                             "model file: write or copy it again") from None
    obj = load_torch_file(path, map_location=device)
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_torch_file(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the fix.

    A refused pickle is reported without torch's advice to retry with ``weights_only=False``: such
    a file can run code when loaded.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise ValueError(f"{path} holds Python objects other than tensors and plain containers{what}, so it was "
                         "not loaded. If it is a checkpoint of this workflow, delete it to start afresh; never "
                         "load untrusted pickles.") from None
    except RuntimeError as err:
        if "zip archive" not in str(err) and "PytorchStreamReader" not in str(err):
            raise
        raise ValueError(f"{path} is not a readable torch file (cut short or corrupted); delete it to start "
                         "afresh") from None


def rng_state() -> dict:
    """Python, NumPy and torch RNG state in a form ``torch.load(weights_only=True)`` accepts."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype("uint32"), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj):
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


class CheckpointManager:
    """Numbered checkpoints in ``folder``; keeps the newest ``keep``; resumes only a matching run."""

    def __init__(self, folder: str | os.PathLike, run_config: dict, keep: int = 2):
        self.folder = Path(folder)
        self.run_config = json.loads(json.dumps(run_config, sort_keys=True, default=str))
        self.keep = keep

    def _existing(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _CKPT.match(p.name))]
        return sorted(found)

    def save(self, step: int, state: dict) -> Path:
        import torch

        target = self.folder / f"checkpoint-{step:08d}.pt"
        payload = {"step": step, "run_config": json.dumps(self.run_config, sort_keys=True), **state}
        with atomic_path(target) as tmp:
            torch.save(payload, tmp)
        for _, old in self._existing()[: -self.keep]:
            old.unlink(missing_ok=True)
        _log.info("checkpoint saved: %s", target)
        return target

    def load_latest(self, map_location: str = "cpu") -> dict | None:
        """The newest checkpoint's state, or None when there is none or it belongs to another run."""
        existing = self._existing()
        if not existing:
            return None
        step, path = existing[-1]
        state = load_torch_file(path, map_location=map_location)
        saved = json.loads(state.pop("run_config"))
        if saved != self.run_config:
            _log.warning("ignoring %s: it was written with a different configuration; starting afresh", path)
            return None
        _log.info("resuming from %s (step %d)", path, step)
        return state

    def clear(self) -> None:
        for _, path in self._existing():
            path.unlink(missing_ok=True)
