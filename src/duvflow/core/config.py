"""Frozen config dataclasses from the plain dicts rules pass as ``params``.

The JSON schema already checked types and filled defaults at workflow start; this adds the
Python-side guarantee that a stage never silently ignores a key it does not know.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

__all__ = ["from_dict"]

T = TypeVar("T")


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

