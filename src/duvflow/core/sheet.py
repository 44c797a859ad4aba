"""The sample sheet: ``slide_id, path, label`` (+ optional ``patient_id``, + any extra columns, kept).

Checked in full before any job starts, and every problem is reported at once, naming the rows,
so a user fixes the sheet in one go instead of one failed job at a time.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from duvflow.core.labels import LABELS

__all__ = ["LABELS", "SampleSheetError", "read_sheet", "validate_sheet"]

REQUIRED = ("slide_id", "path", "label")
# ids name output files: no path separators, and no leading dot (`.`, `..` and hidden files)
SLIDE_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
SLIDE_ID_RULE = "may use only letters, digits, '.', '_' and '-', and must not start with '.'"


class SampleSheetError(ValueError):
    """The sample sheet cannot be used; the message lists every problem found."""


def read_sheet(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a CSV/TSV sample sheet; relative slide paths resolve against the sheet's folder.

    Blank lines and lines starting with ``#`` are skipped; every message names the physical line
    of the sheet (a quoted value may span lines), so a user finds the row in any editor.
    """
    path = Path(path)
    if path.is_dir():
        raise SampleSheetError(f"sample sheet {path} is a directory, not a CSV/TSV file")
    if not path.is_file():
        raise SampleSheetError(f"sample sheet {path} does not exist")
    header, rows, lines, problems = _parse_rows(path)
    df = pd.DataFrame(rows, columns=header, dtype=str)
    return validate_sheet(df, base_dir=path.parent, source=str(path), check_files=check_files, lines=lines,
                          problems=problems)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise SampleSheetError(f"sample sheet {path} is empty" + (" (0 bytes)" if not data else ""))
    try:
        return data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SampleSheetError(f"sample sheet {path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; "
                               "save the sheet as UTF-8 (Excel: 'CSV UTF-8')") from None


def _parse_rows(path: Path) -> tuple[list[str], list[list[str]], list[int], list[str]]:
    """Header, data rows (padded to the header's width), each row's first physical line, and the
    rows that cannot be used as they are (more fields than the header: every column would shift)."""
    sep = "\t" if path.suffix in (".tsv", ".tab") else ","
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=sep, skipinitialspace=True)
    header: list[str] | None = None
    rows, lines, problems = [], [], []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
                continue  # blank or comment line
            if header is None:
                header = [f.strip() for f in fields]
                dup = sorted({c for c in header if header.count(c) > 1})
                if dup:
                    raise SampleSheetError(f"{path}, line {start}: duplicate column(s) {', '.join(dup)}")
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields = fields[:-1]  # trailing empty fields (a stray delimiter at the end of the line)
            if len(fields) > len(header):
                problems.append(f"line {start}: {len(fields)} fields, the header has {len(header)} "
                                f"({', '.join(header)}); quote values that contain {'a tab' if sep != ',' else 'a comma'}")
                continue
            rows.append(fields + [""] * (len(header) - len(fields)))
            lines.append(start)
    except csv.Error as err:
        raise SampleSheetError(f"sample sheet {path}, line {reader.line_num}: {err}") from None
    if header is None:
        raise SampleSheetError(f"sample sheet {path} is empty (only blank or comment lines)")
    return header, rows, lines, problems


def validate_sheet(df: pd.DataFrame, *, base_dir: str | os.PathLike = ".", source: str = "sample sheet",
                   check_files: bool = True, lines: list[int] | None = None,
                   problems: list[str] | None = None) -> pd.DataFrame:
    """Return the sheet with absolute paths, indexed by ``slide_id``; raise listing every problem.

    ``lines``: each row's line in the sheet (default: header = line 1, one line per row);
    ``problems``: those the reader found already, reported together with the rest.
    """
    problems = list(problems or [])
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    if missing_cols:
        raise SampleSheetError(f"{source}: missing column(s) {', '.join(missing_cols)}; "
                               f"expected at least {', '.join(REQUIRED)} (found {', '.join(map(str, df.columns))})")
    if df.empty and not problems:
        raise SampleSheetError(f"{source}: the sheet has no slides")
    df = df.copy()
    for col in REQUIRED:
        df[col] = df[col].astype(str).str.strip()
    line = pd.Series(lines if lines is not None else range(2, len(df) + 2), index=df.index)

    for idx in df.index[df["slide_id"] == ""]:
        problems.append(f"line {line[idx]}: empty slide_id")
    bad_id = ~df["slide_id"].str.fullmatch(SLIDE_ID_PATTERN)
    for idx in df.index[bad_id & (df["slide_id"] != "")]:
        problems.append(f"line {line[idx]}: slide_id {df.at[idx, 'slide_id']!r} {SLIDE_ID_RULE}")
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
        elif check_files and p.is_dir():
            problems.append(f"line {line[idx]} ({df.at[idx, 'slide_id']}): {p} is a directory, not a slide file")
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
