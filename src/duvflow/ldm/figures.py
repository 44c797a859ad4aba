"""The side-by-side sample figure: real patches | class-conditioned | SSL-conditioned samples.

Cell (r, c) of the three panels belongs together: the real training patch whose DINO embedding
conditioned the SSL sample, the class-conditioned sample with the same label and the same
initial noise, and the SSL-conditioned sample (the arms share the sampling plan and seeds).
Frames mark the label (blue benign, red malignant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path
from duvflow.core.patches import LABEL_TO_INT, PatchDataset, load_patch_index

__all__ = ["plot_nearest_pairs", "plot_samples", "select_rows"]

_log = logging.getLogger(__name__)
FRAME = {"benign": (40, 110, 230), "malignant": (220, 40, 40)}


def select_rows(manifest: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` manifest rows, half per label where possible, in manifest order."""
    per = {lab: g for lab, g in manifest.groupby("label", sort=True)}
    take = {lab: min(len(g), n // max(1, len(per))) for lab, g in per.items()}
    spare = n - sum(take.values())
    for lab, g in per.items():  # a label with too few rows leaves its share to the others
        extra = min(spare, len(g) - take[lab])
        take[lab] += extra
        spare -= extra
    return pd.concat([g.head(take[lab]) for lab, g in per.items()]) if per else manifest.head(0)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _framed(img: np.ndarray, label: str, width: int = 2) -> np.ndarray:
    img = img.copy()
    colour = FRAME.get(label, (128, 128, 128))
    img[:width], img[-width:], img[:, :width], img[:, -width:] = colour, colour, colour, colour
    return img


def _tile(images: list[np.ndarray], ncol: int, size: int) -> np.ndarray:
    nrow = max(1, -(-len(images) // ncol))
    canvas = np.full((nrow * size, ncol * size, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = img
    return canvas


def plot_samples(*, ssl: str, class_: str, tables: Sequence[str], stores: Sequence[str],
                 statuses: Sequence[str] | None, fold: str, output: str, grid: int = 4) -> None:
    """Write the three-panel comparison figure of ``fold`` to ``output`` (PNG)."""
    plt = pyplot()
    import torch

    ssl_dir, class_dir = Path(ssl), Path(class_)
    m_ssl = pd.read_parquet(ssl_dir / "manifest.parquet")
    m_cls = pd.read_parquet(class_dir / "manifest.parquet")
    rows = select_rows(m_ssl, grid * grid)
    ssl_imgs = [_read_png(ssl_dir / f) for f in rows["file"]]
    size = ssl_imgs[0].shape[0] if ssl_imgs else 64

    # the class sample paired with each SSL sample: same seed (same noise) and label
    paired = rows[["seed", "label"]].merge(m_cls[["seed", "label", "file"]], on=["seed", "label"], how="left")
    cls_imgs = [_read_png(class_dir / f) if isinstance(f, str) else np.full((size, size, 3), 255, np.uint8)
                for f in paired["file"]]

    index = load_patch_index(tables, stores, statuses)
    src = rows[["source_slide", "source_patch"]].rename(columns={"source_slide": "slide_id",
                                                                 "source_patch": "patch_index"})
    src = src.astype({"patch_index": "int64"}).merge(index, on=["slide_id", "patch_index"], how="left")
    if src["store"].isna().any():
        raise ValueError(f"{ssl_dir}: some source patches are not in the tile tables (were they re-tiled?)")
    dataset = PatchDataset(src, size=size)
    real_imgs = [(dataset[i][0].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
                 for i in range(len(dataset))]

    labels = rows["label"].tolist()
    panels = {
        "Real (conditioning patches)": real_imgs,
        "Class-conditioned LDM": cls_imgs,
        "SSL-conditioned LDM": ssl_imgs,
    }
    ncol = max(1, min(grid, len(labels)))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), dpi=150)
    for ax, (title, imgs) in zip(axes, panels.items(), strict=True):
        ax.imshow(_tile([_framed(im, lab) for im, lab in zip(imgs, labels, strict=True)], ncol, size))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    counts = {lab: labels.count(lab) for lab in LABEL_TO_INT}
    fig.suptitle(f"Fold {fold}: {len(labels)} paired samples (frame: blue benign n={counts['benign']}, "
                 f"red malignant n={counts['malignant']})", fontsize=10)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    _log.info("sample figure of fold %s written to %s", fold, output)


def plot_nearest_pairs(*, synthetic: Sequence[np.ndarray], real: Sequence[np.ndarray], distances: np.ndarray,
                       nearest: np.ndarray, threshold: float, space: str, title: str, output: str,
                       percentile: float = 1.0, n: int = 8) -> None:
    """The ``n`` synthetic patches closest to a real training patch (top row) above that patch (bottom row).

    ``distances[i]``/``nearest[i]``: synthetic patch i's nearest-neighbour distance and the index of that
    real patch; pairs under ``threshold`` (near copies) are marked in red.
    """
    plt = pyplot()
    order = np.argsort(distances, kind="stable")[:n]
    fig, axes = plt.subplots(2, max(1, len(order)), figsize=(1.6 * max(1, len(order)) + 0.6, 3.9), dpi=150,
                             squeeze=False)
    for col, i in enumerate(order):
        for row, img in enumerate((synthetic[i], real[nearest[i]])):
            ax = axes[row, col]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            near = distances[i] < threshold
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red" if near else "0.6")
                spine.set_linewidth(2.5 if near else 0.8)
        axes[0, col].set_title(f"d={distances[i]:.3g}", fontsize=7, color="tab:red" if distances[i] < threshold
                               else "black")
    for ax in axes.ravel()[2 * len(order):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle(f"{title}: closest synthetic/real pairs in {space} space (red: closer than the {percentile:g}th "
                 f"percentile of real-to-real distances, {threshold:.3g})", fontsize=8)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
