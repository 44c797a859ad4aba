"""Classifier arm names, shared by the workflow (paths, jobs) and the evaluation (pairs, flags, plots).

``real`` trains on the fold's real patches; ``real+<cond>`` adds the synthetic set of LDM
conditioning ``<cond>`` (``ssl`` or ``class``). With ``sampling.synthetic_fraction`` a list, every
synthetic arm is one arm per fraction, ``real+<cond>@<f>`` (``real+ssl@0.1``): its synthetic patches
are the nested, stratified subset of the fold's one synthetic set (sampled at the largest fraction)
that makes up the share ``f`` of its training set (:func:`duvflow.core.synthetic.nested_subset`).
A single number keeps the names without ``@`` (the whole set). Baseline arms (``probe``,
``handcrafted``) never carry a fraction.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["FRACTION_SEP", "arm_condition", "arm_fraction", "expand_arms", "fraction_label", "fraction_values",
           "resolve_arm"]

FRACTION_SEP = "@"


def fraction_values(fraction: float | Sequence[float]) -> list[float] | None:
    """``sampling.synthetic_fraction`` as the sorted list of a sweep, or None for a single number."""
    if isinstance(fraction, int | float):
        return None
    return sorted({float(f) for f in fraction})


def fraction_label(fraction: float) -> str:
    """A fraction as it appears in an arm name (``0.10`` -> ``0.1``)."""
    return f"{float(fraction):g}"


def arm_condition(arm: str) -> str | None:
    """The LDM conditioning whose synthetic set the arm adds (``real+ssl@0.1`` -> ``ssl``); None for
    arms without synthetic patches."""
    base = arm.split(FRACTION_SEP, 1)[0]
    return base.split("+", 1)[1] if "+" in base else None


def arm_fraction(arm: str) -> float | None:
    """The synthetic fraction in the arm's name (``real+ssl@0.1`` -> 0.1); None without one (the arm
    then takes its synthetic set whole)."""
    if FRACTION_SEP not in arm:
        return None
    text = arm.split(FRACTION_SEP, 1)[1]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"arm {arm!r}: {text!r} after {FRACTION_SEP!r} is not a fraction") from None


def expand_arms(arms: Sequence[str], fraction: float | Sequence[float]) -> list[str]:
    """The configured arms, each synthetic one once per fraction of a sweep (in ascending order)."""
    values = fraction_values(fraction)
    if values is None:
        return list(arms)
    out = []
    for arm in arms:
        if arm_condition(arm) is None or FRACTION_SEP in arm:
            out.append(arm)
        else:
            out += [f"{arm}{FRACTION_SEP}{fraction_label(f)}" for f in values]
    return out


def resolve_arm(arm: str, fraction: float | Sequence[float]) -> str:
    """A configured arm name as an arm of :func:`expand_arms`: under a fraction sweep a synthetic arm
    named without a fraction (``deploy.arm: real+ssl``) is the one at the largest fraction."""
    values = fraction_values(fraction)
    if values is None or arm_condition(arm) is None or FRACTION_SEP in arm:
        return arm
    return f"{arm}{FRACTION_SEP}{fraction_label(values[-1])}"
