"""The fidelity summary table: every fold's and conditioning's FID / FD-DINO / KID in one CSV and a
Markdown table, read from :mod:`duvflow.ldm.fidelity`'s JSON reports. No torch: this job only reads
JSON, and the torch import would be most of its run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from duvflow.core.io import atomic_path, read_json, write_csv

__all__ = ["FD_DINO_SPACE", "format_metric", "format_percent", "summarise_fidelity"]

# FD-DINO is measured in the DINO teacher's space, which is also the SSL arm's conditioning space:
# it favours that arm, so tables label it as such
FD_DINO_SPACE = "DINO teacher embedding = the SSL arm's conditioning space (favours the ssl arm)"


def format_metric(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summarise_fidelity(*, reports: Sequence[str], table: str, markdown: str, reconstruction: Sequence[str] = (),
                       sweep: Sequence[str] = ()) -> None:
    """All fidelity JSONs -> one CSV (a row per arm, guidance and fold, with the fold's VAE floor: rFID, PSNR,
    SSIM) and a Markdown table with means. ``reports`` are the classifier arms' sets, ``sweep`` the guidance
    sweep's (other scales, and 0 = unconditional)."""
    df = _fidelity_rows(reports, sweep)
    floor = pd.DataFrame([{c: read_json(p).get(c) for c in ("fold", "rfid", "psnr", "ssim")} for p in reconstruction],
                         columns=["fold", "rfid", "psnr", "ssim"])
    df = df.merge(floor.astype({"fold": str}), on="fold", how="left") if len(floor) else df.assign(
        rfid=None, psnr=None, ssim=None)
    write_csv(df, table)
    header = ("| arm | fold | FID | rFID (VAE floor) | FD-DINO † | KID | KID-DINO † | near copies (Inception / DINO) "
              "| real | synthetic |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.arm} | {r.fold} | {format_metric(r.fid)} | {format_metric(r.rfid)} | {format_metric(r.fd_dino)} | {format_metric(r.kid)} | "
                     f"{format_metric(r.kid_dino)} | {format_percent(_num(r.near_copy_fraction_inception))} / "
                     f"{format_percent(_num(r.near_copy_fraction_dino))} | {r.n_real} | {r.n_synthetic} |")
    for arm, g in df.groupby("arm", sort=False):
        stats = {c: pd.to_numeric(g[c], errors="coerce") for c in ("fid", "fd_dino", "kid", "kid_dino")}
        cell = {c: (f"{s.mean():.4f} ± {s.std(ddof=0):.4f}" if s.notna().any() else "n/a") for c, s in stats.items()}
        lines.append(f"| **{arm}** | mean ± sd | {cell['fid']} | | {cell['fd_dino']} | {cell['kid']} | "
                     f"{cell['kid_dino']} | | | |")
    if len(floor):
        lines += ["", "Generative floor (the fold's VAE on held-back patches): "
                  + "; ".join(f"fold {r.fold}: rFID {format_metric(_num(r.rfid))}, PSNR {format_metric(_num(r.psnr))} dB, SSIM "
                              f"{format_metric(_num(r.ssim))}" for r in floor.itertuples())]
    notes = sorted({str(n) for n in df["fid_note"] if n})
    notes.append(f"† {FD_DINO_SPACE}")
    pct = next((read_json(p).get("near_copy_percentile") for p in reports), None) or 1.0
    notes.append(f"near copies: synthetic patches closer to a real training patch than the {pct:g}th percentile of "
                 f"real-to-real nearest-neighbour distances (figures: fid/<arm>/fold_<k>_neighbours.png)")
    guidances = sorted({f"{v:g}" for v in pd.to_numeric(df.loc[~df["sweep"], "guidance"]).dropna()})
    if guidances:
        notes.append(f"guidance of the classifier arms' sets: {', '.join(guidances)}; rows `<arm> @ w` are the "
                     "guidance sweep (w = 0: unconditional), sampled with the same plan and noise")
    text = "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in notes) + "\n"
    with atomic_path(markdown) as tmp:
        tmp.write_text(text)


def _fidelity_rows(reports: Sequence[str], sweep: Sequence[str]) -> pd.DataFrame:
    cols = ["condition", "guidance", "fold", "fid", "fd_dino", "kid", "kid_std", "kid_dino", "kid_dino_std",
            "near_copy_fraction_inception", "near_copy_fraction_dino", "n_real", "n_synthetic", "image_size",
            "fid_note"]
    rows = [{**{c: read_json(p).get(c) for c in cols}, "sweep": is_sweep}
            for paths, is_sweep in ((reports, False), (sweep, True)) for p in paths]
    df = pd.DataFrame(rows, columns=[*cols, "sweep"]).astype({"sweep": bool})
    df["guidance"] = pd.to_numeric(df["guidance"])
    df.insert(0, "arm", [f"{c} @ {_guidance(g)}" if s else str(c)
                         for c, g, s in zip(df["condition"], df["guidance"], df["sweep"], strict=True)])
    return df.sort_values(["sweep", "condition", "guidance", "fold"], kind="stable").reset_index(drop=True)


def _guidance(value) -> str:
    value = _num(value)
    return "n/a" if value is None else f"{value:g}" + (" (unconditional)" if value == 0 else "")


def _num(value):
    """A table cell as float, or None when missing (NaN from a merge, None from JSON)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
