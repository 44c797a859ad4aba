"""Handcrafted per-patch colour and texture features (rule ``extract_patch_features``, one slide).

Colour: mean and standard deviation of each RGB, HSV and HED (haematoxylin-eosin-DAB colour
deconvolution, Ruifrok & Johnston 2001) channel, and grey-level percentiles. Texture: histograms of
rotation-invariant uniform local binary patterns (Ojala et al. 2002) at each radius, and grey-level
co-occurrence statistics (Haralick et al. 1973) at each distance, averaged over four directions.
All from scikit-image, on the patch resized (antialiased) to ``image_size`` so that the features
mean the same at every tiling resolution. Computed once per slide: every fold's baseline reuses them.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from duvflow.baselines.config import HandcraftedConfig
from duvflow.core.config import from_dict
from duvflow.core.io import read_json, write_parquet

__all__ = ["GLCM_PROPS", "extract_patch_features", "feature_columns", "patch_features"]

_log = logging.getLogger(__name__)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_PERCENTILES = (10, 50, 90)
_COLOUR_SPACES = {"rgb": ("r", "g", "b"), "hsv": ("h", "s", "v"), "hed": ("h", "e", "d")}
_KEY_COLUMNS = ["slide_id", "patch_index", "x", "y", "label"]


def feature_columns(cfg: HandcraftedConfig) -> list[str]:
    """Names of the features :func:`patch_features` returns, in order."""
    names = [f"{space}_{ch}_{stat}" for space, chans in _COLOUR_SPACES.items() for ch in chans
             for stat in ("mean", "std")]
    names += [f"grey_p{p}" for p in _PERCENTILES]
    for r in cfg.lbp_radii:
        names += [f"lbp_r{r}_bin{b}" for b in range(8 * r + 2)]
    names += [f"glcm_d{d}_{prop}" for d in cfg.glcm_distances for prop in GLCM_PROPS]
    return names


def patch_features(patch: np.ndarray, cfg: HandcraftedConfig) -> np.ndarray:
    """The feature vector of one uint8 RGB patch (H, W, 3)."""
    from skimage.color import rgb2gray, rgb2hed, rgb2hsv
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    rgb = _resized(patch, cfg.image_size)
    x = rgb.astype(np.float64) / 255.0
    feats = []
    for image in (x, rgb2hsv(x), rgb2hed(x)):
        flat = image.reshape(-1, 3)
        feats += np.stack([flat.mean(0), flat.std(0)], axis=1).ravel().tolist()
    grey = rgb2gray(x)
    feats += np.percentile(grey, _PERCENTILES).tolist()
    grey8 = np.round(grey * 255).astype(np.uint8)
    for r in cfg.lbp_radii:
        points = 8 * r
        codes = local_binary_pattern(grey8, points, r, method="uniform")  # values 0 .. points + 1
        feats += (np.bincount(codes.astype(np.int64).ravel(), minlength=points + 2) / codes.size).tolist()
    levels = np.minimum((grey * cfg.glcm_levels).astype(np.uint8), cfg.glcm_levels - 1)
    glcm = graycomatrix(levels, distances=list(cfg.glcm_distances), angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=cfg.glcm_levels, symmetric=True, normed=True)
    for i in range(len(cfg.glcm_distances)):
        feats += [float(np.nan_to_num(graycoprops(glcm, prop)[i].mean(), nan=1.0)) for prop in GLCM_PROPS]
    return np.asarray(feats, dtype=np.float32)


def _resized(patch: np.ndarray, size: int) -> np.ndarray:
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    from PIL import Image

    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def extract_patch_features(*, table: str | os.PathLike, store: str | os.PathLike, status: str | os.PathLike,
                           output: str | os.PathLike, baselines: dict) -> pd.DataFrame:
    """Write ``slide_id, patch_index, x, y, label`` + one column per feature for every patch of a slide.

    ``config`` is the ``baselines`` section. A slide that tiling skipped gets an empty table.
    """
    from duvflow.baselines.config import BaselineConfig
    from duvflow.slides.store import PatchStore

    cfg = from_dict(BaselineConfig, baselines, "baselines").handcrafted
    columns = feature_columns(cfg)
    tiles = pd.read_parquet(table)
    if read_json(status).get("status") != "ok" or tiles.empty:
        out = pd.DataFrame({c: pd.Series(dtype="float32") for c in columns})
        out = pd.concat([tiles.reindex(columns=_KEY_COLUMNS).iloc[:0], out], axis=1)
    else:
        patches = PatchStore(store)
        values = np.stack([patch_features(patches[int(i)], cfg) for i in tiles["patch_index"]])
        out = pd.concat([tiles[_KEY_COLUMNS].reset_index(drop=True), pd.DataFrame(values, columns=columns)], axis=1)
    write_parquet(out, output, metadata={"features": "handcrafted colour + LBP + GLCM", "image_size": str(cfg.image_size)})
    _log.info("%s: %d features for %d patches", table, len(columns), len(out))
    return out
