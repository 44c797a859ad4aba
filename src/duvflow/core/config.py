"""Frozen config dataclasses from the plain dicts rules pass as ``params``, and which settings
those params hold.

The JSON schema already checked types and filled defaults at workflow start; :func:`from_dict` adds
the Python-side guarantee that a stage never silently ignores a key it does not know. Rules track
only a section's :func:`result_settings` (a change reruns the rule); entry scripts add the rest
back with :func:`job_settings`, so each package function still receives one dict per section.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

import yaml

__all__ = ["BAD_SLIDE_KEYS", "RUNTIME_KEYS", "canonical", "from_dict", "job_settings", "result_settings", "typed_overrides",
           "untracked_settings"]

T = TypeVar("T")

# Settings that cannot change a result (where it runs, how fast, how often it logs or saves). The
# rules pass them outside the tracked ``params`` (changing one reruns nothing) and the training
# harness ignores them when it decides whether a checkpoint may be resumed. One list for both.
# Batch sizes here are inference batches (eval-mode models without batch norm) or sampling batches
# (every image has its own seed); training batch sizes change the optimisation and stay tracked.
RUNTIME_KEYS: dict[str, frozenset[str]] = {
    "tiling": frozenset({"store_compression"}),  # lossless: the same patches come back
    "dino": frozenset({"checkpoint_every", "checkpoints_keep", "device", "augment_on"}),
    "embed": frozenset({"batch_size", "device"}),
    "vae": frozenset({"checkpoint_every", "checkpoints_keep", "log_every", "encode_batch_size", "num_workers",
                      "device"}),
    # sample grids are drawn from their own generator with the weights in eval mode: training is unchanged
    "ldm": frozenset({"checkpoint_every", "checkpoints_keep", "log_every", "grid_every", "grid_size", "grid_steps",
                      "grid_guidance", "device"}),
    "sampling": frozenset({"batch_size", "device"}),
    "fidelity": frozenset({"batch_size", "device"}),
    # per-sample augmentation seeds: the data do not depend on the workers; preloading decodes the same pixels
    "classifier": frozenset({"eval_batch_size", "checkpoint_every", "checkpoints_keep", "num_workers", "preload",
                             "device"}),
}

# Settings that only change what happens to a slide that cannot be read. The tile_slide rule
# tracks them per slide, for the slides whose recorded outcome they change (workflow/rules/
# common.smk: bad_slide_policy), not as part of the section every job depends on.
BAD_SLIDE_KEYS: dict[str, frozenset[str]] = {"tiling": frozenset({"on_bad_slide"})}


def _untracked(section: str) -> frozenset[str]:
    return RUNTIME_KEYS.get(section, frozenset()) | BAD_SLIDE_KEYS.get(section, frozenset())


def result_settings(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the section's run-time-only (and per-slide) keys: what every result of
    the section, or a checkpoint, depends on. Rules pass this as their tracked ``params``.

    Keys are sorted (nested mappings too): Snakemake compares a param by its repr, so the order in
    which config files and defaults list the keys must not rerun anything."""
    skip = _untracked(section)
    return canonical({k: v for k, v in values.items() if k not in skip})


def canonical(value: Any) -> Any:
    """``value`` with the keys of every mapping in it sorted (a tracked param's repr is then order-free)."""
    if isinstance(value, typing.Mapping):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return type(value)(canonical(v) for v in value)
    return value


def untracked_settings(config: dict[str, Any], section: str) -> dict[str, Any]:
    """The keys of ``config[section]`` that :func:`result_settings` leaves out."""
    keep = _untracked(section)
    return {k: v for k, v in config.get(section, {}).items() if k in keep}


def job_settings(snakemake: Any, section: str) -> dict[str, Any]:
    """The whole ``section`` for a job's function: the rule's tracked param of that name plus the
    untracked keys, read from the config the job runs under (``snakemake.config``, which
    Snakemake does not compare when it decides what to rerun)."""
    return {**getattr(snakemake.params, section), **untracked_settings(snakemake.config, section)}


def typed_overrides(values: typing.Mapping[str, Any]) -> dict[str, Any]:
    """``--config`` values with the strings nested in dicts and lists read as YAML scalars.

    Snakemake types only top-level ``--config`` values; in ``aggregate={theta: 0.3}`` the 0.3 stays
    the string "0.3". Nested strings here become numbers, booleans or null where YAML reads them so.
    """
    def typed(value: Any, nested: bool) -> Any:
        if isinstance(value, dict):
            return {k: typed(v, True) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v, True) for v in value]
        if nested and isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            if parsed is None or isinstance(parsed, (bool, int, float)):
                return parsed
            try:
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            except ValueError:
                return value
        return value

    return typed(dict(values), False)


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

