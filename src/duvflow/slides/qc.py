"""Cohort tiling QC: one table row per slide from the ``tiles/{slide}.json`` status records, and a plot.

The table (TSV) is what a person scans for problems before training: which slides were skipped and
why, which yielded no tissue, how many patches each gave, how much tissue, which background mode the
tissue detector chose, and whether the microns per pixel came from the file.

``flags`` marks slides that stand out from the cohort (the run goes on; a flag asks for a look at
the slide's QC thumbnail): a background mode other than the cohort's majority, a tissue fraction
or kept-patch count that is a robust outlier (more than ``OUTLIER_Z`` median absolute deviations
from the median, the latter on a log scale), or a median tissue colour far from the cohort's (a
scanner or stain batch). Outliers need at least ``MIN_SLIDES_FOR_OUTLIERS`` usable slides.
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
              "tissue_area_px", "background", "mpp", "mpp_source", "patch_size", "level", "problems",
              "flags", "tissue_fraction", "background_method", "background_found", "n_tissue_patches",
              "n_filtered_background", "n_filtered_focus", "n_filtered_pen", "tissue_rgb")
OUTLIER_Z = 3.5  # robust z-score (Iglewicz & Hoaglin's cut-off for the modified z-score)
MIN_SLIDES_FOR_OUTLIERS = 5
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
        rgb = rec.get("tissue_rgb")
        row["tissue_rgb"] = ",".join(str(v) for v in rgb) if rgb else None
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(QC_COLUMNS))
    for col in ("n_patches", "n_candidates", "n_tissue_patches", "n_filtered_background", "n_filtered_focus",
                "n_filtered_pen"):
        df[col] = df[col].fillna(0).astype(np.int64)
    for col in ("tissue_area_px", "patch_size", "level"):  # empty (not NaN floats) for skipped slides
        df[col] = df[col].astype("Int64")
    df = df.sort_values("slide_id", kind="stable").reset_index(drop=True)
    df["flags"] = cohort_flags(df)
    return df


def _robust_z(values: pd.Series) -> pd.Series:
    med = values.median()
    mad = (values - med).abs().median()
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(0.0, index=values.index)
    return 0.6745 * (values - med) / mad


def cohort_flags(df: pd.DataFrame) -> list[str]:
    """Per row, the ways the slide stands out from the cohort ("" when it does not)."""
    flags = {i: [] for i in df.index}
    used = df[df["status"] != "skipped"]
    modes = used["background"].dropna()
    if len(modes) >= 3:
        counts = modes.value_counts()
        if len(counts) > 1 and counts.iloc[0] > counts.iloc[1]:
            majority = counts.index[0]
            for i in modes.index[modes != majority]:
                flags[i].append(f"background {modes[i]} but the cohort's majority is {majority}")
    ok = df[df["status"] == "ok"]
    if len(ok) >= MIN_SLIDES_FOR_OUTLIERS:
        checks = (("tissue fraction", ok["tissue_fraction"].astype(float)),
                  ("kept patches", np.log1p(ok["n_patches"].astype(float))))
        for name, values in checks:
            z = _robust_z(values)
            for i in z.index[z.abs() > OUTLIER_Z]:
                flags[i].append(f"{name} {'high' if z[i] > 0 else 'low'} for the cohort (robust z {z[i]:+.1f})")
        colours = ok["tissue_rgb"].dropna()
        if len(colours) >= MIN_SLIDES_FOR_OUTLIERS:
            rgb = pd.DataFrame([[float(v) for v in c.split(",")] for c in colours], index=colours.index)
            z = pd.concat([_robust_z(rgb[c]) for c in rgb.columns], axis=1).abs().max(axis=1)
            for i in z.index[z > OUTLIER_Z]:
                flags[i].append(f"tissue colour far from the cohort's (robust z {z[i]:.1f}: scanner or stain batch?)")
    return ["; ".join(flags[i]) for i in df.index]


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
    for i, flag in enumerate(df["flags"]):
        if flag:  # flagged slides: a red "!" above their patch bar
            axes[0].annotate("!", (i, df["n_patches"].iloc[i]), xytext=(0, 2), textcoords="offset points",
                             ha="center", fontsize=11, fontweight="bold", color="#cc0000")
    ax.set_xticks(x, df["slide_id"], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("slide (letter in the lower panel: background mode, d = dark, b = bright; "
                  "red ! above a bar: cohort QC flag, see cohort.tsv)")
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
    flagged = df[df["flags"] != ""]
    for sid, flag in zip(flagged["slide_id"], flagged["flags"], strict=True):
        _log.warning("cohort QC flag for %s: %s", sid, flag)
    write_csv(df, table)
    plot_cohort(df, plot)
    _log.info("QC of %d slides: %d patches in %d usable slides", len(df), int(df["n_patches"].sum()),
              int((df["status"] == "ok").sum()))
    return df
