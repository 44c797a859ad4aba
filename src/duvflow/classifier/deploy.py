"""Using a trained classifier on new slides: the deployable bundle and slide-level prediction.

The deployable model is the one trained on fold ``all`` (every usable slide except that fold's
validation slides). :func:`export_model` bundles its weights with the theta aggregation chose for
it (fixed, or ``auto`` on fold ``all``'s validation slides). :func:`predict_slides` tiles new slides
with the tiling settings stored in the model's metadata (the training cohort's), predicts every
patch, and writes per slide the score (mean patch probability), the label (``score > theta``),
the patch table and a heatmap of patch probabilities over the slide thumbnail. It runs on the CPU.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, read_json, write_csv, write_json, write_parquet

__all__ = ["DEFAULT_THETA", "check_model_folder", "export_model", "predict_slides", "resolve_theta"]

_log = logging.getLogger(__name__)
DEFAULT_THETA = 0.2


def export_model(*, weights: str | os.PathLike, meta: str | os.PathLike, theta: str | os.PathLike,
                 output_weights: str | os.PathLike, output_meta: str | os.PathLike) -> dict:
    """Copy the fold-``all`` classifier to the deploy folder with its slide threshold in the metadata."""
    info, chosen = read_json(meta), read_json(theta)
    if str(info.get("fold")) != "all":
        raise ValueError(f"{meta}: the deployable model must be trained on fold 'all', not fold {info.get('fold')}")
    with atomic_path(output_weights) as tmp:
        shutil.copyfile(weights, tmp)
    info.update(theta=float(chosen["theta"]), theta_mode=chosen["mode"], theta_fixed=chosen["theta_fixed"],
                theta_auto=chosen["theta_auto"], theta_source=str(theta))
    write_json(info, output_meta)
    _log.info("deployable model of arm %s: theta %s = %.3g", info.get("arm"), chosen["mode"], info["theta"])
    return info


MODEL_KEYS = ("model", "img_size", "mean", "std")  # what load_classifier needs from model.json


def check_model_folder(folder: str | os.PathLike) -> dict:
    """``model.json`` of a classifier folder, after checking the folder is one (errors name the file)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"--model {folder} is a file; give the folder that holds model.safetensors "
                                "and model.json")
    for name in ("model.safetensors", "model.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a duvflow classifier folder: {name} is missing (use "
                                    "results/deploy/<arm>/ or results/classifier/<arm>/fold_all/)")
    meta = read_json(folder / "model.json")
    missing = [k for k in MODEL_KEYS if k not in meta] if isinstance(meta, dict) else list(MODEL_KEYS)
    if missing:
        raise ValueError(f"{folder / 'model.json'} lacks {', '.join(map(repr, missing))}; it was not written by "
                         "train_classifier (or was edited): export the model again")
    return meta


def resolve_theta(theta: float | None, meta: dict) -> tuple[float, str]:
    """The slide threshold: given explicitly, else the one stored with the model, else 0.2."""
    if theta is not None:
        if not 0 <= theta <= 1:
            raise ValueError(f"theta must lie in [0, 1], got {theta}")
        return float(theta), "given"
    if meta.get("theta") is not None:
        return float(meta["theta"]), f"stored with the model ({meta.get('theta_mode', 'fixed')})"
    _log.warning("the model folder stores no theta (not an exported model); using the default %.2g", DEFAULT_THETA)
    return DEFAULT_THETA, "default"


def _slide_ids(paths: Sequence[Path]) -> list[str]:
    ids = [re.sub(r"[^A-Za-z0-9._-]", "_", p.name.split(".")[0]) or "slide" for p in paths]
    seen: dict[str, int] = {}
    out = []
    for sid in ids:  # two slides with the same stem (from different folders) get distinct ids
        seen[sid] = seen.get(sid, 0) + 1
        out.append(sid if ids.count(sid) == 1 else f"{sid}-{seen[sid]}")
    return out


def predict_slides(*, slides: Sequence[str | os.PathLike], model: str | os.PathLike, out_dir: str | os.PathLike,
                   theta: float | None = None, batch_size: int = 64, device: str = "auto", num_workers: int = 0,
                   threads: int | None = None, heatmap_max: int = 1024, keep_tiles: bool = False,
                   strict: bool = False) -> pd.DataFrame:
    """Label new slides with the classifier in ``model``; write results under ``out_dir``.

    Writes ``predictions.csv`` (``slide_id, path, status, error, n_patches, score, theta, label,
    heatmap``), ``patches/{slide_id}.parquet`` and ``heatmaps/{slide_id}.png``. A slide that cannot
    be read or has no tissue gets ``status`` ``error``/``no_tissue`` with the reason; the others
    are still predicted (``strict``: then raise, after writing the table, naming the failed slides).
    """
    from duvflow.classifier.model import load_classifier
    from duvflow.core.runtime import configure_threads, select_device
    from duvflow.slides.reader import SlideReadError

    check_model_folder(model)
    configure_threads(threads)
    dev = select_device(device)
    net, meta = load_classifier(model, dev)
    theta, source = resolve_theta(theta, meta)
    tiling = dict(meta.get("tiling") or {})
    if not tiling:
        _log.warning("%s stores no tiling settings; using the tiling defaults", model)
    tiling["on_bad_slide"] = "fail"  # an unreadable slide is reported per slide, never silently empty
    out_dir = Path(out_dir)
    paths = [Path(p) for p in slides]
    rows = []
    for sid, path in zip(_slide_ids(paths), paths, strict=True):
        row = {"slide_id": sid, "path": str(path), "status": "ok", "error": "", "n_patches": 0, "score": np.nan,
               "theta": theta, "label": "", "heatmap": ""}
        try:
            patches = _predict_one(sid, path, net, meta, tiling, out_dir, batch_size=batch_size, device=dev,
                                   num_workers=num_workers, keep_tiles=keep_tiles, threads=threads or 1)
        except (SlideReadError, OSError, ValueError) as err:  # reported per slide; the others go on
            row.update(status="error", error=str(err))
            _log.error("%s: %s", path, err)
            rows.append(row)
            continue
        if patches is None:
            row.update(status="no_tissue", error="no tissue patch found with the model's tiling settings")
            _log.warning("%s: no tissue patches; no prediction", path)
            rows.append(row)
            continue
        score = float(patches["prob"].mean())
        row.update(n_patches=len(patches), score=score, label="malignant" if score > theta else "benign")
        heatmap = out_dir / "heatmaps" / f"{sid}.png"
        _heatmap(path, patches, heatmap, title=f"{sid}: score {score:.3f} {'>' if score > theta else '<='} "
                                               f"theta {theta:g} -> {row['label']}", max_size=heatmap_max)
        row["heatmap"] = str(heatmap)
        _log.info("%s: %d patches, score %.3f -> %s (theta %.3g, %s)", sid, len(patches), score, row["label"], theta,
                  source)
        rows.append(row)
    table = pd.DataFrame(rows)
    write_csv(table, out_dir / "predictions.csv")
    failed = table[table["status"] == "error"]
    if strict and len(failed):
        raise SlideReadError(", ".join(failed["path"]), "; ".join(failed["error"]))
    return table


def _predict_one(sid: str, path: Path, net, meta: dict, tiling: dict, out_dir: Path, *, batch_size: int, device,
                 num_workers: int, keep_tiles: bool, threads: int) -> pd.DataFrame | None:
    from duvflow.classifier.data import PatchImages
    from duvflow.classifier.predict import predict_probs
    from duvflow.slides.tiling import tile_slide

    tiles_dir = out_dir / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{sid}.", dir=tiles_dir))
    try:
        status = tile_slide(slide=path, slide_id=sid, label="unknown", tiling=tiling, tiles=work / f"{sid}.parquet",
                            store=work / f"{sid}.h5", status=work / f"{sid}.json", thumbnail=work / f"{sid}.png",
                            threads=threads)
        if status["status"] != "ok" or status["n_patches"] == 0:
            return None
        index = pd.read_parquet(work / f"{sid}.parquet")
        index["store"] = str(work / f"{sid}.h5")
        index["label_int"] = 0  # unknown; not used
        probs = predict_probs(net, PatchImages(index, None, meta["img_size"]), batch_size=batch_size, device=device,
                              num_workers=num_workers, desc=f"predict {sid}")
        patches = index[["slide_id", "patch_index", "x", "y", "size_level0"]].assign(prob=probs)
        write_parquet(patches, out_dir / "patches" / f"{sid}.parquet", metadata={"model": str(meta.get("arm"))})
        if keep_tiles:
            for f in work.iterdir():
                os.replace(f, tiles_dir / f.name)
        return patches
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _heatmap(path: Path, patches: pd.DataFrame, target: Path, *, title: str, max_size: int) -> None:
    """Patch probabilities (colour, 0..1) over the slide thumbnail."""
    plt = pyplot()

    from duvflow.slides.reader import composite, open_slide

    with open_slide(path) as slide:
        rgba, ds = slide.thumbnail(max_size)
        fill = slide.background_color or (0, 0, 0)
    rgb = composite(rgba, fill)
    h, w = rgb.shape[:2]
    overlay = np.full((h, w), np.nan, np.float32)
    for x, y, e, p in zip(patches["x"].to_numpy(), patches["y"].to_numpy(), patches["size_level0"].to_numpy(),
                          patches["prob"].to_numpy(), strict=True):
        x0, y0 = int(x / ds), int(y / ds)
        x1, y1 = max(x0 + 1, round((x + e) / ds)), max(y0 + 1, round((y + e) / ds))
        overlay[y0:y1, x0:x1] = p
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.6))
    ax.imshow(rgb)
    im = ax.imshow(np.ma.masked_invalid(overlay), cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="patch malignancy probability")
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
