"""Frozen config dataclasses from the plain dicts rules pass as ``params``.

The JSON schema already checked types and filled defaults at workflow start; this adds the
Python-side guarantee that a stage never silently ignores a key it does not know.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

__all__ = ["RUNTIME_KEYS", "from_dict", "result_settings"]

T = TypeVar("T")

# Settings that cannot change a result (where it runs, how fast, how often it logs or saves). The
# rules pass them outside the tracked ``params`` (changing one reruns nothing) and the training
# harness ignores them when it decides whether a checkpoint may be resumed. One list for both.
RUNTIME_KEYS: dict[str, frozenset[str]] = {
    "dino": frozenset({"checkpoint_every", "checkpoints_keep", "device"}),
    "embed": frozenset({"batch_size", "device"}),
    "vae": frozenset({"checkpoint_every", "checkpoints_keep", "log_every", "encode_batch_size", "num_workers",
                      "device"}),
    "ldm": frozenset({"checkpoint_every", "checkpoints_keep", "log_every", "device"}),
    "sampling": frozenset({"batch_size", "device"}),
    "fidelity": frozenset({"batch_size", "device"}),
    "classifier": frozenset({"eval_batch_size", "checkpoint_every", "checkpoints_keep", "num_workers", "preload",
                              "device"}),
}


def result_settings(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the section's run-time-only keys (what a result, or a checkpoint, depends on)."""
    skip = RUNTIME_KEYS.get(section, frozenset())
    return {k: v for k, v in values.items() if k not in skip}


def from_dict(cls: type[T], values: dict[str, Any] | None, section: str | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``values``; unknown keys raise a ValueError naming them.

    Nested dataclass fields are built recursively; lists become tuples (so configs stay hashable).
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = section or cls.__name__
        raise ValueError(f"unknown {where} setting(s) {', '.join(unknown)} (unknown keys are an error: check the "
                         f"spelling); known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        sub = hints[name] if dataclasses.is_dataclass(hints[name]) else None
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{section}.{name}" if section else name)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)

