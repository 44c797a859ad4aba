"""Slide-level cross-validation folds (``splits.csv``).

Every usable slide (tiling status ``ok``) is assigned a test fold by stratified K-fold on the slide
label; inside each fold's remaining slides a small stratified validation subset is held out for
model selection. Fold ``all`` trains on every slide (minus its validation subset) to build the
deployable model and has no test slides. Splits are by slide, never by patch, so no patch of a
fold's test slide can reach that fold's training.

Output (long format, one row per slide and fold): ``slide_id, label, fold, role`` with ``fold`` in
``0..K-1, all`` and ``role`` in ``train, val, test``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from duvflow.core.config import from_dict
from duvflow.core.io import read_json, write_csv
from duvflow.core.labels import LABELS

__all__ = ["SplitsConfig", "assign_folds", "check_class_counts", "check_no_leakage", "fold_seed", "make_splits",
           "read_splits"]

_log = logging.getLogger(__name__)
ROLES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitsConfig:
    n_folds: int = 5
    val_fraction: float = 0.2
    min_val_slides: int = 1


def fold_seed(seed: int, fold: str | int) -> int:
    """A stage's seed for ``fold``: distinct per fold, stable across runs (fold ``all`` -> ``seed``)."""
    return int(seed) if str(fold) == "all" else int(seed) + 7919 * (int(fold) + 1)


def check_class_counts(labels: Iterable[str], n_folds: int, *, left_out: Sequence[str] = ()) -> None:
    """Raise unless every class has at least ``n_folds`` slides (each test fold needs one of each).

    Called at workflow start on the sample sheet and again on the slides that survived tiling
    (``left_out``: the skipped ones), with the same wording.
    """
    counts = Counter(labels)
    short = [lab for lab in LABELS if counts[lab] < n_folds]
    if not short:
        return
    found = ", ".join(f"{counts[lab]} {lab}" for lab in LABELS)
    where = (f"after tiling left out {len(left_out)} slide(s) ({', '.join(left_out)}; see the QC table), "
             if left_out else "")
    fewest = min(counts[lab] for lab in LABELS)
    remedy = f"Lower splits.n_folds to {fewest} or add" if fewest >= 2 else "Add"
    raise ValueError(f"splits.n_folds = {n_folds} needs at least {n_folds} slides of each class, but {where}the "
                     f"cohort has {found}. {remedy} {' and '.join(short)} slides.")


def assign_folds(labels: Mapping[str, str], cfg: SplitsConfig, seed: int) -> pd.DataFrame:
    """The long-format split table for slides ``{slide_id: label}``; deterministic given ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    slides = sorted(labels)
    y = np.array([labels[s] for s in slides])
    k = cfg.n_folds
    if k < 2:
        raise ValueError(f"splits.n_folds must be at least 2, got {k}")
    if len(slides) < k:
        raise ValueError(f"splits.n_folds={k} needs at least {k} usable slides; only {len(slides)} "
                         f"({', '.join(slides)}) passed tiling. Lower splits.n_folds or add slides.")
    counts = pd.Series(y).value_counts()
    if counts.min() < k:
        _log.warning("label %r has only %d usable slides for %d folds: some test folds lack that label",
                     counts.idxmin(), counts.min(), k)
    rng = np.random.default_rng(seed)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
    test_fold = np.empty(len(slides), dtype=int)
    # StratifiedKFold needs >= 2 members per class to stratify; a lone-label slide still gets a fold
    for fold, (_, test_idx) in enumerate(skf.split(np.zeros(len(y)), y if counts.min() >= 2 else None)):
        test_fold[test_idx] = fold

    rows = []
    for fold in [*range(k), "all"]:
        test = test_fold == fold if fold != "all" else np.zeros(len(slides), bool)
        rest = np.flatnonzero(~test)
        val = _pick_validation(rest, y, cfg, rng, fold)
        for i, sid in enumerate(slides):
            role = "test" if test[i] else ("val" if i in val else "train")
            rows.append((sid, y[i], str(fold), role))
    table = pd.DataFrame(rows, columns=["slide_id", "label", "fold", "role"])
    check_no_leakage(table)
    return table


def _pick_validation(candidates: np.ndarray, y: np.ndarray, cfg: SplitsConfig, rng: np.random.Generator,
                     fold) -> set[int]:
    """A stratified validation subset of ``candidates`` that keeps every label in training."""
    n = len(candidates)
    desired = max(cfg.min_val_slides, round(cfg.val_fraction * n)) if cfg.val_fraction > 0 else 0
    labels, per_label = np.unique(y[candidates], return_counts=True)
    # each label keeps at least one training slide: the training set must see every class
    caps = per_label - 1
    want = min(desired, int(caps.sum()))
    if want < desired:
        _log.warning("fold %s: only %d slide(s) outside the test fold (%s); %d validation slide(s) would leave a "
                     "label without training slides, so the fold has %d", fold, n,
                     ", ".join(f"{c} {lab}" for lab, c in zip(labels, per_label, strict=True)), desired, want)
    if want <= 0:
        return set()
    # largest-remainder allocation of `want` over labels, proportional to their counts, within caps
    quota = want * per_label / per_label.sum()
    alloc = np.minimum(np.floor(quota).astype(int), caps)
    for j in np.argsort(-(quota - alloc), kind="stable"):
        if alloc.sum() >= want:
            break
        if alloc[j] < caps[j]:
            alloc[j] += 1
    while alloc.sum() < want:  # remainders exhausted by caps: fill any label with room
        j = int(np.argmax(caps - alloc))
        alloc[j] += 1
    chosen: set[int] = set()
    for lab, m in zip(labels, alloc, strict=True):
        pool = candidates[y[candidates] == lab]
        chosen.update(int(i) for i in rng.choice(pool, size=int(m), replace=False))
    return chosen


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise when a slide has two roles in one fold or is a test slide of more or fewer than one fold."""
    dup = table.duplicated(["slide_id", "fold"], keep=False)
    if dup.any():
        raise ValueError(f"slides listed twice in one fold: {sorted(table.loc[dup, 'slide_id'].unique())[:10]}")
    bad_roles = set(table["role"]) - set(ROLES)
    if bad_roles:
        raise ValueError(f"unknown roles in splits table: {sorted(bad_roles)}")
    folds = table[table["fold"] != "all"]
    n_test = folds[folds["role"] == "test"].groupby("slide_id").size().reindex(table["slide_id"].unique(), fill_value=0)
    if (n_test != 1).any():
        raise ValueError(f"slides not in exactly one test fold: {list(n_test[n_test != 1].index)[:10]}")
    if (table.loc[table["fold"] == "all", "role"] == "test").any():
        raise ValueError("fold 'all' must not have test slides")


def make_splits(*, statuses: Sequence[str | os.PathLike], labels: Mapping[str, str], output: str | os.PathLike,
                splits: dict, seed: int) -> pd.DataFrame:
    """Write ``splits.csv`` for the slides whose tiling status is ``ok`` (``statuses``: tile JSONs)."""
    cfg = from_dict(SplitsConfig, splits, "splits")
    usable, left_out = {}, []
    for path in statuses:
        status = read_json(path)
        sid = status.get("slide_id")
        if sid not in labels:
            raise ValueError(f"{path}: slide_id {sid!r} is not in the sample sheet")
        if status.get("status") == "ok" and status.get("n_patches", 1) > 0:
            usable[sid] = labels[sid]
        else:
            left_out.append(sid)
            _log.info("slide %s left out of the folds: tiling status %s (%s)", sid, status.get("status"),
                      status.get("reason", ""))
    if not usable:
        raise ValueError("no usable slides: every slide was skipped or had no tissue (see the QC table)")
    check_class_counts(usable.values(), cfg.n_folds, left_out=left_out)
    table = assign_folds(usable, cfg, seed)
    write_csv(table, output)
    summary = table.groupby(["fold", "role"]).size().unstack(fill_value=0)
    _log.info("wrote %s: %d slides, %d folds + 'all'\n%s", output, len(usable), cfg.n_folds, summary.to_string())
    return table


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """``splits.csv`` (long format: slide_id, label, fold, role) with every column as text."""
    splits = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"slide_id", "label", "fold", "role"} - set(splits.columns)
    if missing:
        raise ValueError(f"{path}: splits table lacks column(s) {', '.join(sorted(missing))}")
    return splits
