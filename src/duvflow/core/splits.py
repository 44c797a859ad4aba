"""Slide- or patient-level cross-validation folds (``splits.csv``).

Every usable slide (tiling status ``ok``) is assigned a test fold by stratified K-fold on the slide
label; inside each fold's remaining slides a small stratified validation subset is held out for
model selection. Fold ``all`` trains on every slide (minus its validation subset) to build the
deployable model and has no test slides. Splits are by slide, never by patch, so no patch of a
fold's test slide can reach that fold's training.

When the sample sheet names each slide's patient (``patient_id``), the unit of every split is the
patient instead: folds come from stratified *group* K-fold (stratified by the patient's label, a
patient with a malignant slide counting as malignant), validation subsets are drawn by patient,
and every slide of a patient has the same role in a fold. Without ``patient_id`` each slide is its
own patient and the splits are exactly the slide-level ones.

Output (long format, one row per slide and fold): ``slide_id, label, fold, role`` (+ ``patient_id``
when patients are given) with ``fold`` in ``0..K-1, all`` and ``role`` in ``train, val, test``.
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

__all__ = [
    "SplitsConfig",
    "assign_folds",
    "check_class_counts",
    "check_no_leakage",
    "check_patient_roles",
    "fold_seed",
    "make_splits",
    "patient_labels",
    "read_splits",
]

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


def patient_labels(labels: Mapping[str, str], patients: Mapping[str, str]) -> dict[str, str]:
    """``{patient_id: label}``: malignant when any of the patient's slides is malignant."""
    out: dict[str, str] = {}
    for sid, label in labels.items():
        pid = patients[sid]
        out[pid] = LABELS[1] if LABELS[1] in (label, out.get(pid)) else label
    return out


def assign_folds(labels: Mapping[str, str], cfg: SplitsConfig, seed: int,
                 patients: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The long-format split table for slides ``{slide_id: label}``; deterministic given ``seed``.

    ``patients`` (``{slide_id: patient_id}``) makes the patient the unit of folds and validation
    subsets; ``None`` makes every slide its own patient.
    """
    slides = sorted(labels)
    y = np.array([labels[s] for s in slides])
    if patients is not None:
        missing = [s for s in slides if s not in patients]
        if missing:
            raise ValueError(f"slides without a patient_id: {', '.join(missing[:10])}")
        unit_label = patient_labels({s: labels[s] for s in slides}, patients)
        units = sorted(unit_label)
        position = {u: j for j, u in enumerate(units)}
        unit_of = np.array([position[patients[s]] for s in slides])
        unit_y = np.array([unit_label[u] for u in units])
    else:
        units, unit_of, unit_y = slides, np.arange(len(slides)), y
    kind = "patients" if patients is not None else "slides"
    rng = np.random.default_rng(seed)
    unit_fold = _unit_test_folds(units, unit_of, unit_y, cfg.n_folds, int(rng.integers(2**31 - 1)), kind)

    rows = []
    for fold in [*range(cfg.n_folds), "all"]:
        test = unit_fold == fold if fold != "all" else np.zeros(len(units), bool)
        val = _pick_validation(np.flatnonzero(~test), unit_y, cfg, rng, fold, kind)
        for i, sid in enumerate(slides):
            u = unit_of[i]
            role = "test" if test[u] else ("val" if u in val else "train")
            rows.append((sid, y[i], str(fold), role))
    table = pd.DataFrame(rows, columns=["slide_id", "label", "fold", "role"])
    if patients is not None:
        table["patient_id"] = table["slide_id"].map(patients)
        _warn_single_label_training(table)
    check_no_leakage(table)
    return table


def _unit_test_folds(units: Sequence[str], unit_of: np.ndarray, unit_y: np.ndarray, k: int, random_state: int,
                     kind: str) -> np.ndarray:
    """The test fold of every unit (slide or patient): stratified (group) K-fold on the unit labels."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ValueError(f"splits.n_folds must be at least 2, got {k}")
    if len(units) < k:
        raise ValueError(f"splits.n_folds={k} needs at least {k} usable {kind}; only {len(units)} "
                         f"({', '.join(units)}) passed tiling. Lower splits.n_folds or add slides.")
    counts = pd.Series(unit_y).value_counts()
    if counts.min() < k:
        _log.warning("label %r has only %d usable %s for %d folds: some test folds lack that label",
                     counts.idxmin(), counts.min(), kind, k)
    unit_fold = np.empty(len(units), dtype=int)
    if kind == "slides":
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
        # StratifiedKFold needs >= 2 members per class to stratify; a lone-label slide still gets a fold
        for fold, (_, test_idx) in enumerate(skf.split(np.zeros(len(unit_y)), unit_y if counts.min() >= 2 else None)):
            unit_fold[test_idx] = fold
        return unit_fold
    # one row per slide, labelled with its patient's label, grouped by patient: the folds balance
    # the patient labels weighted by slide count and never split a patient
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=random_state)
    slide_y = unit_y[unit_of]
    for fold, (_, test_idx) in enumerate(sgkf.split(np.zeros(len(unit_of)), slide_y, groups=unit_of)):
        unit_fold[unit_of[test_idx]] = fold
    return unit_fold


def _warn_single_label_training(table: pd.DataFrame) -> None:
    """Warn when a fold's training slides lack a label (possible when patients have mixed labels)."""
    train = table[table["role"] == "train"]
    for fold, part in train.groupby("fold"):
        absent = sorted(set(LABELS) - set(part["label"]))
        if absent:
            _log.warning("fold %s: no %s training slide (patient grouping left none)", fold, " or ".join(absent))


def _pick_validation(candidates: np.ndarray, y: np.ndarray, cfg: SplitsConfig, rng: np.random.Generator,
                     fold, kind: str = "slides") -> set[int]:
    """A stratified validation subset of ``candidates`` (slides or patients) that keeps every label in
    training; with patients, ``val_fraction`` and ``min_val_slides`` count patients."""
    n = len(candidates)
    desired = max(cfg.min_val_slides, round(cfg.val_fraction * n)) if cfg.val_fraction > 0 else 0
    labels, per_label = np.unique(y[candidates], return_counts=True)
    # each label keeps at least one training slide: the training set must see every class
    caps = per_label - 1
    want = min(desired, int(caps.sum()))
    if want < desired:
        _log.warning("fold %s: only %d %s outside the test fold (%s); %d validation %s would leave a "
                     "label without training %s, so the fold has %d", fold, n, kind,
                     ", ".join(f"{c} {lab}" for lab, c in zip(labels, per_label, strict=True)), desired, kind, kind,
                     want)
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


def check_patient_roles(table: pd.DataFrame) -> None:
    """Raise when the slides of one patient have different roles in a fold (a test patient's other
    slide in training is leakage); a table without ``patient_id`` has nothing to check."""
    if "patient_id" not in table.columns:
        return
    roles = table.groupby(["fold", "patient_id"])["role"].agg(lambda r: ", ".join(sorted(set(r))))
    mixed = roles[roles.str.contains(",")]
    if len(mixed):
        detail = "; ".join(f"patient {pid} in fold {fold}: {r}" for (fold, pid), r in mixed.head(10).items())
        raise ValueError(f"slides of one patient have different roles in a fold ({detail}); every slide of a "
                         "patient must share its role: regenerate splits.csv (rule make_splits)")


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise when a slide has two roles in one fold, is a test slide of more or fewer than one fold,
    or (with ``patient_id``) a patient's slides have different roles in one fold."""
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
    check_patient_roles(table)


def make_splits(*, statuses: Sequence[str | os.PathLike], labels: Mapping[str, str], output: str | os.PathLike,
                splits: dict, seed: int, patients: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Write ``splits.csv`` for the slides whose tiling status is ``ok`` (``statuses``: tile JSONs);
    ``patients`` (``{slide_id: patient_id}``, from the sheet's optional column) groups by patient."""
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
    table = assign_folds(usable, cfg, seed, patients)
    write_csv(table, output)
    summary = table.groupby(["fold", "role"]).size().unstack(fill_value=0)
    grouping = f", {table['patient_id'].nunique()} patients" if patients is not None else ""
    _log.info("wrote %s: %d slides%s, %d folds + 'all'\n%s", output, len(usable), grouping, cfg.n_folds,
              summary.to_string())
    return table


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """``splits.csv`` (long format: slide_id, label, fold, role [, patient_id]) with every column as text."""
    splits = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"slide_id", "label", "fold", "role"} - set(splits.columns)
    if missing:
        raise ValueError(f"{path}: splits table lacks column(s) {', '.join(sorted(missing))}")
    check_patient_roles(splits)
    return splits
