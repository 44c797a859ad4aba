"""The fidelity summary table: every fold's and conditioning's FID / FD-DINO / KID in one CSV and a
Markdown table, read from :mod:`duvflow.ldm.fidelity`'s JSON reports. No torch: this job only reads
JSON, and the torch import would be most of its run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from duvflow.core.io import atomic_path, read_json, write_csv

__all__ = ["format_metric", "summarise_fidelity"]


def format_metric(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def summarise_fidelity(*, reports: Sequence[str], table: str, markdown: str) -> None:
    """All fidelity JSONs -> one CSV (a row per arm and fold) and a Markdown table with means."""
    cols = ["condition", "fold", "fid", "fd_dino", "kid", "kid_std", "kid_dino", "kid_dino_std", "n_real",
            "n_synthetic", "image_size", "fid_note"]
    rows = [{c: read_json(p).get(c) for c in cols} for p in reports]
    df = pd.DataFrame(rows, columns=cols).sort_values(["condition", "fold"], kind="stable")
    write_csv(df, table)
    lines = ["| arm | fold | FID | FD-DINO | KID | KID-DINO | real | synthetic |", "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        cells = [format_metric(v) for v in (r.fid, r.fd_dino, r.kid, r.kid_dino)]
        lines.append(f"| {r.condition} | {r.fold} | {' | '.join(cells)} | {r.n_real} | {r.n_synthetic} |")
    for cond, g in df.groupby("condition", sort=True):
        stats = {c: pd.to_numeric(g[c], errors="coerce") for c in ("fid", "fd_dino", "kid", "kid_dino")}
        cell = {c: (f"{s.mean():.4f} ± {s.std(ddof=0):.4f}" if s.notna().any() else "n/a") for c, s in stats.items()}
        lines.append(f"| **{cond}** | mean ± sd | {cell['fid']} | {cell['fd_dino']} | {cell['kid']} | "
                     f"{cell['kid_dino']} | | |")
    notes = sorted({str(n) for n in df["fid_note"] if n})
    text = "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in notes) + "\n"
    with atomic_path(markdown) as tmp:
        tmp.write_text(text)
