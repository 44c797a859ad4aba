"""Failures in sight: checks of the upstream models that feed the synthetic arms.

A run can finish and still rest on a broken stage. This module reads what the stages wrote and
flags, per fold:

* ``dino_collapse``: the DINO teacher's ``teacher.json`` lists collapse warnings (its training
  loop's :class:`~duvflow.ssl.train.CollapseMonitor`); the SSL arm's conditioning is then suspect;
* ``vae_no_reconstruction``: the VAE's reconstruction loss (its ``metrics.csv``) fell by less than
  ``flags.vae_min_recon_drop`` of its starting value, or is not finite (a pretrained VAE is not checked);
* ``ldm_loss_flat``: the LDM's denoising loss fell by less than ``flags.ldm_min_loss_drop``, or is
  not finite;
* ``synthetic_short``: the synthetic set holds fewer patches (manifest rows, or image files
  present) than the sampler was asked for (``n_requested`` in the manifest's metadata).

"Start" and "end" of a curve are the means of its first and last ``flags.loss_window`` share of
logged steps, so one noisy step neither raises nor hides a flag. Each flag names the arms it
affects. Only NumPy, pandas and pyarrow are used here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.arms import arm_condition
from duvflow.core.config import from_dict
from duvflow.core.io import read_json, write_csv

__all__ = ["FLAG_COLUMNS", "FlagsConfig", "arm_flags", "collect_flags", "curve_drop", "read_flags"]

_log = logging.getLogger(__name__)
FLAG_COLUMNS = ("stage", "condition", "fold", "flag", "arms", "detail", "source")
SYNTHETIC_MANIFEST = "manifest.parquet"  # written by duvflow.ldm.sample (a torch module: not imported here)


@dataclasses.dataclass(frozen=True)
class FlagsConfig:
    """The ``flags`` config section."""

    loss_window: float = 0.2
    ldm_min_loss_drop: float = 0.05
    vae_min_recon_drop: float = 0.2

    def __post_init__(self):
        if not 0 < self.loss_window <= 0.5:
            raise ValueError(f"flags.loss_window must lie in (0, 0.5], got {self.loss_window}")
        for key in ("ldm_min_loss_drop", "vae_min_recon_drop"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"flags.{key} must lie in [0, 1), got {getattr(self, key)}")


def curve_drop(values: Sequence[float], window: float) -> tuple[float, float, float] | None:
    """(start mean, end mean, relative drop) of a logged curve; None with fewer than 2 points.

    The drop is ``1 - end / start`` (0: flat, negative: rose); NaN when a value is not finite.
    """
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    if not np.isfinite(v).all():
        return math.nan, math.nan, math.nan
    k = max(1, round(window * len(v)))
    start, end = float(v[:k].mean()), float(v[-k:].mean())
    return start, end, (1.0 - end / start) if start > 0 else math.nan


def _arms_of(arms: Sequence[str], conditions: Sequence[str]) -> str:
    return ";".join(a for a in arms if arm_condition(a) in conditions)


def _dino_flags(teachers: Mapping[str, str], arms: Sequence[str]) -> list[dict]:
    rows = []
    for fold, path in teachers.items():
        warned = read_json(path).get("collapse_warnings") or []
        if warned:
            rows.append({"stage": "dino", "condition": "ssl", "fold": str(fold), "flag": "dino_collapse",
                         "arms": _arms_of(arms, ["ssl"]), "source": str(path),
                         "detail": f"DINO teacher of fold {fold} collapsed ({', '.join(warned)}): its embeddings "
                                   "condition the SSL LDM"})
    return rows


def _curve_flag(path: Path, column: str, min_drop: float, window: float) -> str | None:
    """Why a training curve fails (None when it fell enough or is too short to judge)."""
    if not path.is_file():
        return f"{path.name} is missing, so the {column} curve cannot be checked"
    table = pd.read_csv(path)
    if column not in table.columns:
        return f"{path.name} has no {column!r} column"
    drop = curve_drop(table[column], window)
    if drop is None:
        return None
    start, end, fell = drop
    if math.isnan(fell):
        return f"{column} is not finite (or starts at 0) in {path.name}"
    if fell < min_drop:
        return (f"{column} {start:.4g} -> {end:.4g} over {len(table)} logged steps (fell {100 * fell:.1f}%, "
                f"less than {100 * min_drop:.0f}%)")
    return None


def _vae_flags(vaes: Mapping[str, str], arms: Sequence[str], conditions: Sequence[str], cfg: FlagsConfig) -> list[dict]:
    rows = []
    for fold, folder in vaes.items():
        metrics = Path(folder) / "metrics.csv"
        if not metrics.is_file() and not (Path(folder) / "config.json").is_file():
            continue  # a reference to a pretrained VAE: nothing was trained here
        why = _curve_flag(metrics, "recon", cfg.vae_min_recon_drop, cfg.loss_window)
        if why:
            rows.append({"stage": "vae", "condition": "", "fold": str(fold), "flag": "vae_no_reconstruction",
                         "arms": _arms_of(arms, conditions), "source": str(metrics),
                         "detail": f"VAE of fold {fold} does not learn to reconstruct: {why}"})
    return rows


def _ldm_flags(ldms: Mapping[str, Mapping[str, str]], arms: Sequence[str], cfg: FlagsConfig) -> list[dict]:
    rows = []
    for cond, folds in ldms.items():
        for fold, folder in folds.items():
            metrics = Path(folder) / "metrics.csv"
            why = _curve_flag(metrics, "loss", cfg.ldm_min_loss_drop, cfg.loss_window)
            if why:
                rows.append({"stage": "ldm", "condition": cond, "fold": str(fold), "flag": "ldm_loss_flat",
                             "arms": _arms_of(arms, [cond]), "source": str(metrics),
                             "detail": f"LDM ({cond}) of fold {fold}: loss did not fall: {why}"})
    return rows


def _synthetic_flags(sets: Mapping[str, Mapping[str, str]], arms: Sequence[str]) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for cond, folds in sets.items():
        for fold, folder in folds.items():
            manifest = Path(folder) / SYNTHETIC_MANIFEST
            meta = {k.decode(): v.decode() for k, v in (pq.read_schema(manifest).metadata or {}).items()}
            files = pd.read_parquet(manifest, columns=["file"])["file"]
            present = int(sum((Path(folder) / f).is_file() for f in files))
            if "n_requested" not in meta:
                _log.warning("%s has no n_requested entry (written before this check existed): rerun sample_ldm "
                             "to check its size", manifest)
                continue
            requested = int(meta["n_requested"])
            if len(files) < requested or present < requested:
                rows.append({"stage": "synthetic", "condition": cond, "fold": str(fold), "flag": "synthetic_short",
                             "arms": _arms_of(arms, [cond]), "source": str(manifest),
                             "detail": f"synthetic set {cond} of fold {fold}: {len(files)} manifest rows and "
                                       f"{present} image files for {requested} requested"})
    return rows


def collect_flags(*, teachers: Mapping[str, str], vaes: Mapping[str, str], ldms: Mapping[str, Mapping[str, str]],
                  synthetic: Mapping[str, Mapping[str, str]], arms: Sequence[str], output: str | os.PathLike,
                  flags: dict | None = None) -> pd.DataFrame:
    """Check every stage's outputs and write the flags table ``output`` (CSV, one row per flag).

    ``teachers``: fold -> DINO ``teacher.json``; ``vaes``: fold -> VAE folder; ``ldms`` and
    ``synthetic``: condition -> fold -> LDM / synthetic-set folder.
    """
    cfg = from_dict(FlagsConfig, flags or {}, "flags")
    conditions = sorted(ldms)
    rows = (_dino_flags(teachers, arms) + _vae_flags(vaes, arms, conditions, cfg) + _ldm_flags(ldms, arms, cfg)
            + _synthetic_flags(synthetic, arms))
    table = pd.DataFrame(rows, columns=list(FLAG_COLUMNS))
    write_csv(table, output)
    for row in rows:
        _log.warning("FLAG %s: %s", row["flag"], row["detail"])
    _log.info("%d flag(s) over %d DINO teachers, %d VAEs, %d LDMs, %d synthetic sets", len(rows), len(teachers),
              len(vaes), sum(map(len, ldms.values())), sum(map(len, synthetic.values())))
    return table


def read_flags(path: str | os.PathLike) -> pd.DataFrame:
    """The flags table written by :func:`collect_flags` (every column as text)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(FLAG_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: flags table lacks column(s) {', '.join(sorted(missing))}")
    return table


def arm_flags(flags: pd.DataFrame, arm: str) -> list[str]:
    """Short labels (``dino_collapse fold 0``) of the flags that affect ``arm``."""
    hit = flags[flags["arms"].str.split(";").apply(lambda arms: arm in arms)]
    return [f"{r.flag} fold {r.fold}" + (f" ({r.condition})" if r.condition and r.stage != "dino" else "")
            for r in hit.itertuples()]
