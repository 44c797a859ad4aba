"""The sample sheet: ``slide_id, path, label`` (+ optional ``patient_id``, + any extra columns, kept).

Checked in full before any job starts, and every problem is reported at once, naming the rows,
so a user fixes the sheet in one go instead of one failed job at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from duvflow.core.labels import LABELS

__all__ = ["LABELS", "SampleSheetError", "read_sheet", "validate_sheet"]

REQUIRED = ("slide_id", "path", "label")


class SampleSheetError(ValueError):
    """The sample sheet cannot be used; the message lists every problem found."""


def read_sheet(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a CSV/TSV sample sheet; relative slide paths resolve against the sheet's folder."""
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"sample sheet {path} does not exist")
    sep = "\t" if path.suffix in (".tsv", ".tab") else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SampleSheetError(f"sample sheet {path} cannot be parsed: {err}") from err
    df.columns = [c.strip() for c in df.columns]
    return validate_sheet(df, base_dir=path.parent, source=str(path), check_files=check_files)


def validate_sheet(df: pd.DataFrame, *, base_dir: str | os.PathLike = ".", source: str = "sample sheet",
                   check_files: bool = True) -> pd.DataFrame:
    """Return the sheet with absolute paths, indexed by ``slide_id``; raise listing every problem.

    Row numbers in messages are the sheet's line numbers (header = line 1).
    """
    problems: list[str] = []
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    if missing_cols:
        raise SampleSheetError(f"{source}: missing column(s) {', '.join(missing_cols)}; "
                               f"expected at least {', '.join(REQUIRED)} (found {', '.join(map(str, df.columns))})")
    if df.empty:
        raise SampleSheetError(f"{source}: the sheet has no slides")
    df = df.copy()
    for col in REQUIRED:
        df[col] = df[col].astype(str).str.strip()
    line = pd.Series(range(2, len(df) + 2), index=df.index)

    for idx in df.index[df["slide_id"] == ""]:
        problems.append(f"line {line[idx]}: empty slide_id")
    bad_id = df["slide_id"].str.contains(r"[^A-Za-z0-9._-]", regex=True)
    for idx in df.index[bad_id & (df["slide_id"] != "")]:
        problems.append(f"line {line[idx]}: slide_id {df.at[idx, 'slide_id']!r} may use only letters, digits, '.', '_' and '-'")
    dup = df["slide_id"].duplicated(keep=False) & (df["slide_id"] != "")
    for sid, group in df[dup].groupby("slide_id"):
        problems.append(f"lines {', '.join(str(line[i]) for i in group.index)}: duplicate slide_id {sid!r}")
    df["label"] = df["label"].str.lower()
    for idx in df.index[~df["label"].isin(LABELS)]:
        problems.append(f"line {line[idx]} ({df.at[idx, 'slide_id']}): unknown label {df.at[idx, 'label']!r}; "
                        f"use one of {', '.join(LABELS)}")
    base_dir = Path(base_dir)
    resolved = []
    for idx, raw in df["path"].items():
        p = Path(os.path.expanduser(raw))
        p = p if p.is_absolute() else (base_dir / p)
        resolved.append(str(p.resolve()) if raw else "")
        if not raw:
            problems.append(f"line {line[idx]} ({df.at[idx, 'slide_id']}): empty path")
        elif check_files and not p.is_file():
            problems.append(f"line {line[idx]} ({df.at[idx, 'slide_id']}): slide file {p} does not exist")
    df["path"] = resolved
    if "patient_id" in df.columns:  # optional: slides of one patient then share their role in every fold
        df["patient_id"] = df["patient_id"].astype(str).str.strip()
        for idx in df.index[df["patient_id"] == ""]:
            problems.append(f"line {line[idx]} ({df.at[idx, 'slide_id']}): empty patient_id; give every slide its "
                            "patient or drop the column")
    if problems:
        raise SampleSheetError(f"{source} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return df.set_index("slide_id", drop=False).sort_index()
