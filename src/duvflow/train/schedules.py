"""Per-step schedules shared by the training loops: linear warm-up then half-cosine (DINO, Caron et
al. 2021: learning rate, weight decay, teacher momentum; the classifier's learning rate) and
warm-up-then-constant (DINO's teacher temperature), as arrays indexed by optimizer step or, with
:func:`cosine_value`, for a single step.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cosine_schedule", "cosine_value", "warmup_constant_schedule"]


def cosine_value(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0,
                 warmup_start: float = 0.0) -> float:
    """Value at ``step``: linear ``warmup_start -> base`` over ``warmup_steps``, then cosine ``base -> final``
    reaching ``final`` at ``total_steps - 1`` (held there after)."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    span = total_steps - warmup_steps
    if span <= 1:
        return base if span == 1 and step == warmup_steps else final
    t = min(step - warmup_steps, span - 1) / (span - 1)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t))


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """:func:`cosine_value` for every step ``0 .. total_steps - 1``."""
    if total_steps <= 0:
        raise ValueError(f"a schedule needs at least one step, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    return np.array([cosine_value(s, total_steps, base, final, warmup_steps, warmup_start)
                     for s in range(total_steps)], dtype=np.float64)


def warmup_constant_schedule(start: float, value: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear ``start -> value`` over ``warmup_steps``, then ``value`` (DINO's teacher temperature)."""
    warmup_steps = min(warmup_steps, total_steps)
    out = np.full(total_steps, value, dtype=np.float64)
    if warmup_steps > 0:
        out[:warmup_steps] = np.linspace(start, value, warmup_steps)
    return out
