"""Cohort tiling QC: one table row per slide from the ``tiles/{slide}.json`` status records, and a plot.

The table (TSV) is what a person scans for problems before training: which slides were skipped and
why, which yielded no tissue, how many patches each gave, how much tissue, which background mode the
tissue detector chose, and whether the microns per pixel came from the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, read_json, write_csv

__all__ = ["QC_COLUMNS", "cohort_table", "plot_cohort", "qc_cohort"]

_log = logging.getLogger(__name__)

QC_COLUMNS = ("slide_id", "label", "status", "reason", "n_patches", "n_candidates", "tissue_area_mm2",
              "tissue_area_px", "background", "mpp", "mpp_source", "patch_size", "level", "problems")
_LABEL_COLOURS = {"benign": "#4c9be8", "malignant": "#e8704c"}


def cohort_table(status: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per slide status JSON, sorted by slide id; ``problems`` joined with ``; ``."""
    rows = []
    for path in status:
        rec = read_json(path)
        row = {c: rec.get(c) for c in QC_COLUMNS}
        problems = list(rec.get("problems") or [])
        if rec.get("status") == "skipped":
            problems.insert(0, f"skipped: {rec.get('reason', '')}")
        elif rec.get("status") == "no_tissue":
            problems.insert(0, "no tissue patches")
        row["problems"] = "; ".join(problems)
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(QC_COLUMNS))
    for col in ("n_patches", "n_candidates"):
        df[col] = df[col].fillna(0).astype(np.int64)
    for col in ("tissue_area_px", "patch_size", "level"):  # empty (not NaN floats) for skipped slides
        df[col] = df[col].astype("Int64")
    return df.sort_values("slide_id", kind="stable").reset_index(drop=True)


def plot_cohort(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Patches per slide (bars coloured by label; skipped / no-tissue slides marked) and tissue area."""
    plt = pyplot()
    from matplotlib.patches import Patch

    n = len(df)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * n + 2), 6.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(n)
    colours = [_LABEL_COLOURS.get(lab, "#999999") for lab in df["label"]]
    ax = axes[0]
    ax.bar(x, df["n_patches"], color=colours)
    top = max(1, int(df["n_patches"].max()) if n else 1)
    for i, (status, reason) in enumerate(zip(df["status"], df["reason"], strict=True)):
        if status != "ok":
            ax.bar(i, top, color="none", edgecolor="#aa0000", hatch="//", linewidth=0.8)
            ax.text(i, top * 0.5, "SKIPPED" if status == "skipped" else "NO TISSUE", rotation=90, ha="center",
                    va="center", fontsize=8, color="#aa0000")
            _log.info("QC: %s %s (%s)", df["slide_id"].iloc[i], status, reason)
    ax.set_ylabel("patches kept")
    ax.set_title(f"Tiling QC: {n} slides, {int((df['status'] == 'ok').sum())} usable, "
                 f"{int(df['n_patches'].sum())} patches")
    handles = [Patch(color=c, label=lab) for lab, c in _LABEL_COLOURS.items()]
    handles.append(Patch(facecolor="none", edgecolor="#aa0000", hatch="//", label="skipped / no tissue"))
    ax.legend(handles=handles, fontsize=8, loc="upper right")

    ax = axes[1]
    read = df["status"] != "skipped"  # skipped slides have no area at all
    if n and df.loc[read, "tissue_area_mm2"].notna().all():
        ax.bar(x, df["tissue_area_mm2"].astype(float).fillna(0), color=colours)
        ax.set_ylabel("tissue area (mm²)")
    else:  # some slides without MPP: compare in level-0 pixels
        ax.bar(x, df["tissue_area_px"].fillna(0).astype(float), color=colours)
        ax.set_ylabel("tissue area (level-0 px)")
    for i, bg in enumerate(df["background"]):
        if isinstance(bg, str):
            ax.annotate(bg[0], (i, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(x, df["slide_id"], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("slide (letter in the lower panel: background mode, d = dark, b = bright)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def qc_cohort(*, status: Sequence[str | os.PathLike], table: str | os.PathLike, plot: str | os.PathLike) -> pd.DataFrame:
    """The ``qc_cohort`` rule: cohort QC table (TSV) and plot (PNG) from the slides' status JSONs."""
    df = cohort_table(status)
    bad = df[df["status"] != "ok"]
    if len(bad):
        _log.warning("%d of %d slide(s) unusable: %s", len(bad), len(df),
                     ", ".join(f"{s} ({st})" for s, st in zip(bad["slide_id"], bad["status"], strict=True)))
    write_csv(df, table)
    plot_cohort(df, plot)
    _log.info("QC of %d slides: %d patches in %d usable slides", len(df), int(df["n_patches"].sum()),
              int((df["status"] == "ok").sum()))
    return df
