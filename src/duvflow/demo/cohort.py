"""The embedded demo cohort: synthetic DUV-fluorescence-like whole-surface images from a seed.

Each slide is a pyramidal tiled TIFF (one top-level page per level, so OpenSlide opens it as
``generic-tiff``) with microns-per-pixel in its resolution tags. The look follows deep-UV
fluorescence surface images: dark background, bright tissue, nuclei and cytoplasm/stroma in two
fluorescence colours, an irregular tissue outline with holes and fat.

Benign tissue has organised ducts and lobules (rings of small regular nuclei around lumens), fibrous
stroma with sparse small nuclei, fat and lymphocyte aggregates. Malignant tissue has nests and sheets
of enlarged, pleomorphic, crowded nuclei in desmoplastic stroma. The mean colour of tissue is
equalised between the two (per-region gains) so the difference a classifier can learn is
morphological, not a colour or brightness cue. Sizes are in microns and scale with the slide's MPP.

The image is rendered at level 0 in horizontal bands (smooth fields from coarse random grids,
textures from row-block noise, cells drawn as polygons), so memory stays at a few bytes per pixel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_csv

__all__ = [
    "PATTERNS",
    "DemoConfig",
    "cohort_plan",
    "generate_slide",
    "make_demo_slide",
    "pyramid_levels",
    "render_slide",
    "slide_seed",
    "write_pyramid_tiff",
    "write_sheet",
]

_log = logging.getLogger(__name__)

PATTERNS = ("benign", "malignant", "mixed")
_LABEL_OF = {"benign": "benign", "malignant": "malignant", "mixed": "malignant"}


# --------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The ``demo`` config section."""

    enabled: bool = False
    n_slides: int = 12
    width: int = 6144
    height: int = 6144
    mpp: float = 0.5
    seed: int = 7
    slides_per_patient: int = 1

    @classmethod
    def from_dict(cls, d: dict | None) -> DemoConfig:
        cfg = from_dict(cls, d, "demo")
        if cfg.n_slides < 2:
            raise ValueError(f"demo.n_slides must be at least 2 (one per class), got {cfg.n_slides}")
        if cfg.width < 256 or cfg.height < 256:
            raise ValueError(f"demo slides must be at least 256x256 pixels, got {cfg.width}x{cfg.height}")
        if not cfg.mpp > 0:
            raise ValueError(f"demo.mpp must be positive, got {cfg.mpp}")
        if cfg.slides_per_patient < 1:
            raise ValueError(f"demo.slides_per_patient must be at least 1, got {cfg.slides_per_patient}")
        return cfg


# --------------------------------------------------------------------------------------- cohort


def cohort_plan(n_slides: int, seed: int, slides_per_patient: int = 1) -> pd.DataFrame:
    """Slide ids, labels and tissue patterns of the demo cohort (cheap: no images).

    Half the slides are benign (the extra one of an odd count is malignant); about a third of the
    malignant ones are ``mixed`` (a malignant focus in benign tissue). Ids are ``demo01``.. and say
    nothing about the label; the label order is shuffled by ``seed``. With ``slides_per_patient``
    > 1 a ``patient_id`` column groups the slides into patients of that many slides (the last may
    have fewer), taking benign and malignant slides in turn, so a patient can have both, as a
    patient with a benign and a malignant biopsy does.
    """
    if n_slides < 2:
        raise ValueError(f"the demo cohort needs at least 2 slides, got {n_slides}")
    rng = np.random.default_rng([int(seed), 0xD0C0])
    n_benign = n_slides // 2
    n_malignant = n_slides - n_benign
    n_mixed = max(1, round(n_malignant / 3)) if n_malignant >= 2 else 0
    malignant = ["mixed"] * n_mixed + ["malignant"] * (n_malignant - n_mixed)
    patterns = np.array(["benign"] * n_benign + list(rng.permutation(malignant)), dtype=object)
    patterns = patterns[rng.permutation(n_slides)]
    width = max(2, len(str(n_slides)))
    ids = [f"demo{i + 1:0{width}d}" for i in range(n_slides)]
    plan = pd.DataFrame({
        "slide_id": ids,
        "label": [_LABEL_OF[p] for p in patterns],
        "pattern": list(patterns),
    })
    if slides_per_patient > 1:
        plan["patient_id"] = _demo_patients(plan["label"], slides_per_patient)
    return plan


def _demo_patients(labels: pd.Series, size: int) -> list[str]:
    """Patient ids: slides in turns of benign and malignant (each in id order), cut into groups of ``size``."""
    by_label = [list(labels.index[labels == lab]) for lab in ("benign", "malignant")]
    order = [i for pair in itertools.zip_longest(*by_label) for i in pair if i is not None]
    n_patients = -(-len(order) // size)
    width = max(2, len(str(n_patients)))
    patient = {row: f"patient{k // size + 1:0{width}d}" for k, row in enumerate(order)}
    return [patient[i] for i in labels.index]


def slide_seed(seed: int, slide_id: str) -> int:
    """A per-slide seed from the cohort seed and the slide id (stable across processes)."""
    digest = hashlib.sha256(f"duvflow-demo:{int(seed)}:{slide_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_demo_slide(slide: str | os.PathLike, *, demo: dict, slide_id: str, label: str, pattern: str,
                    compression: str = "jpeg") -> None:
    """Entry point of the ``make_demo_slide`` rule: one slide of the configured demo cohort.

    JPEG tiles (RGB, quality 90) like most scanners write: ~7x smaller and faster than deflate.
    """
    cfg = DemoConfig.from_dict(demo)
    generate_slide(slide, label=label, pattern=pattern, seed=slide_seed(cfg.seed, slide_id),
                   width=cfg.width, height=cfg.height, mpp=cfg.mpp, compression=compression)


def write_sheet(sheet: str | os.PathLike, *, slides: Sequence[str | os.PathLike], demo: dict) -> pd.DataFrame:
    """Write the demo cohort's sample sheet ``slide_id, path, label, pattern`` (and ``patient_id``
    with ``demo.slides_per_patient`` > 1) atomically.

    ``slides`` are the generated files (named ``<slide_id>.tiff``); paths in the sheet are relative
    to the sheet's folder, so the results folder can be moved. ``pattern`` is informational only.
    """
    cfg = DemoConfig.from_dict(demo)
    plan = cohort_plan(cfg.n_slides, cfg.seed, cfg.slides_per_patient).set_index("slide_id", drop=False)
    by_id = {Path(p).stem: Path(p) for p in slides}
    missing = sorted(set(plan.index) - set(by_id))
    extra = sorted(set(by_id) - set(plan.index))
    if missing or extra:
        raise ValueError(f"demo slides do not match the cohort plan (n_slides={cfg.n_slides}, seed={cfg.seed}): "
                         f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    base = Path(sheet).resolve().parent
    rows = []
    for sid in plan.index:
        path = by_id[sid].resolve()
        if not path.is_file():
            raise FileNotFoundError(f"demo slide {path} does not exist")
        rows.append({"slide_id": sid, "path": os.path.relpath(path, base),
                     **plan.loc[sid].drop(["slide_id"]).to_dict()})
    columns = ["slide_id", "path", "label", "pattern"] + (["patient_id"] if "patient_id" in plan else [])
    df = pd.DataFrame(rows, columns=columns)
    write_csv(df, sheet)
    _log.info("wrote demo sheet %s (%d slides: %s)", sheet, len(df), df["label"].value_counts().to_dict())
    return df


# --------------------------------------------------------------------------------------- TIFF


def pyramid_levels(width: int, height: int, tile: int = 256) -> int:
    """Number of levels (factor 2 each) until the smallest level fits in one tile (at least 3)."""
    n = 1
    while max(width, height) > tile:
        width, height = (width + 1) // 2, (height + 1) // 2
        n += 1
    return max(n, 3)


def _half(img: np.ndarray) -> np.ndarray:
    """2x2 box downsample (odd edges replicated)."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2)) + ((0, 0),) * (img.ndim - 2), mode="edge")
    s = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, *img.shape[2:]).astype(np.uint16)
    return ((s[:, 0, :, 0] + s[:, 0, :, 1] + s[:, 1, :, 0] + s[:, 1, :, 1] + 2) // 4).astype(np.uint8)


def write_pyramid_tiff(path: str | os.PathLike, image: np.ndarray, mpp: float | None = None, *,
                       levels: int | None = None, tile: int = 256, compression: str = "deflate",
                       description: str | None = None, workers: int = 1) -> Path:
    """Write ``image`` (H, W, 3 uint8, level 0) as a pyramidal tiled TIFF that OpenSlide reads.

    One top-level page per level (halving each time; not SubIFDs, which OpenSlide reads as one
    level), tiles of ``tile`` pixels, ``compression`` one of deflate, zstd, lzw, jpeg (RGB
    photometric: OpenSlide shows YCbCr JPEG tiles in wrong colours) or none. With ``mpp`` the
    resolution tags say pixels per centimetre, which OpenSlide reports as ``openslide.mpp-x/y``;
    without it no resolution tags are written. The file appears atomically.
    """
    import tifffile

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    codecs = {"deflate": ("zlib", {"level": 6}), "zstd": ("zstd", {"level": 3}), "lzw": ("lzw", None),
              "jpeg": ("jpeg", {"level": 90}), "none": (None, None)}
    if compression not in codecs:
        raise ValueError(f"unknown TIFF compression {compression!r}; use one of {', '.join(codecs)}")
    codec, args = codecs[compression]
    h, w = image.shape[:2]
    n_levels = levels or pyramid_levels(w, h, tile)
    common = {"tile": (tile, tile), "photometric": "rgb", "compression": codec, "compressionargs": args,
              "metadata": None, "maxworkers": workers, "software": "duvflow"}
    if codec == "jpeg":
        common["subsampling"] = (1, 1)
    if mpp is not None:
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        common["resolutionunit"] = "CENTIMETER"
    else:
        common["resolutionunit"] = "NONE"
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
        level = image
        for i in range(n_levels):
            kw = dict(common)
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kw["resolution"] = (ppcm, ppcm)
            tif.write(level, subfiletype=0 if i == 0 else 1, description=description if i == 0 else None, **kw)
            if i + 1 < n_levels:
                level = _half(level)
    return Path(path)


# ----------------------------------------------------------------------------- smooth random fields


def _bspline_taps(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First node index and the 4 cubic B-spline weights at grid coordinates ``u``."""
    i0 = np.floor(u).astype(np.int64)
    f = (u - i0).astype(np.float32)
    f2, f3 = f * f, f * f * f
    w = np.stack([(1 - f) ** 3 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6], -1)
    return i0 - 1, w


class _Grid:
    """A smooth field: values on a coarse grid (node spacing ``cell`` px), cubic B-spline in between."""

    def __init__(self, values: np.ndarray, cell: float):
        self.values = values.astype(np.float32)
        self.cell = float(cell)

    @classmethod
    def noise(cls, rng: np.random.Generator, height: int, width: int, cell: float) -> _Grid:
        gh, gw = int(height / cell) + 5, int(width / cell) + 5
        return cls(rng.standard_normal((gh, gw)), cell)

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (y, x) of the grid nodes, each (gh, gw)."""
        gh, gw = self.values.shape
        return np.meshgrid((np.arange(gh) - 1.5) * self.cell, (np.arange(gw) - 1.5) * self.cell, indexing="ij")

    def _matrix(self, coords: np.ndarray, n_nodes: int) -> np.ndarray:
        i0, w = _bspline_taps(coords / self.cell + 1.5)
        m = np.zeros((len(coords), n_nodes), np.float32)
        rows = np.arange(len(coords))[:, None]
        m[rows, np.clip(i0[:, None] + np.arange(4), 0, n_nodes - 1)] = w
        return m

    def lattice(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The field on the lattice ``ys`` x ``xs`` (pixel coordinates)."""
        wy = self._matrix(np.asarray(ys, np.float64), self.values.shape[0])
        wx = self._matrix(np.asarray(xs, np.float64), self.values.shape[1])
        return (wy @ self.values) @ wx.T


class _Field:
    """A sum of weighted grids (octaves)."""

    def __init__(self, grids: Sequence[tuple[_Grid, float]]):
        self.grids = list(grids)
        self._right: dict[int, np.ndarray] = {}

    def rows(self, r0: int, r1: int, width: int) -> np.ndarray:
        """The field on rows ``r0:r1``: one matrix product for all octaves,
        ``[Wy_1 G_1 .. Wy_k G_k] @ [a_1 Wx_1^T; ..; a_k Wx_k^T]``."""
        if width not in self._right:
            self._right[width] = np.concatenate(
                [g._matrix(np.arange(width) + 0.5, g.values.shape[1]).T * np.float32(amp) for g, amp in self.grids])
        left = np.concatenate([g._matrix(np.arange(r0, r1) + 0.5, g.values.shape[0]) @ g.values
                               for g, _ in self.grids], axis=1)
        return left @ self._right[width]

    def lattice(self, ys, xs) -> np.ndarray:
        return sum(grid.lattice(ys, xs) * np.float32(amp) for grid, amp in self.grids)


class _NoiseRows:
    """Uniform white noise (zero mean) on any rows of a ``width``-wide image, generated in blocks of
    rows from (seed, tag, block index): identical whichever band asks, so bands join seamlessly."""

    BLOCK = 64

    def __init__(self, seed: int, tag: int, width: int):
        self.seed, self.tag, self.width = seed, tag, width
        self._cache: dict[int, np.ndarray] = {}

    def _block(self, k: int) -> np.ndarray:
        if k not in self._cache:
            rng = np.random.default_rng([self.seed, self.tag, k])
            self._cache[k] = rng.random((self.BLOCK, self.width), dtype=np.float32) - np.float32(0.5)
        return self._cache[k]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        b = self.BLOCK
        for k in [k for k in self._cache if k < r0 // b]:  # bands go down the image
            del self._cache[k]
        parts = [self._block(k)[max(r0, k * b) - k * b:min(r1, (k + 1) * b) - k * b]
                 for k in range(r0 // b, (r1 - 1) // b + 1)]
        return np.concatenate(parts, 0)


def _dilations(sigma: float) -> list[int]:
    """Hole sizes of a cascade of [1, 2, 1]/4 filters (a trous) whose combined std is about ``sigma``."""
    ds, var = [1], 0.5
    while var < 0.8 * sigma**2:
        d = 2 * ds[-1] if var + 2 * ds[-1] ** 2 <= 1.3 * sigma**2 else ds[-1]
        ds.append(d)
        var += d * d / 2
    return ds


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """About a Gaussian blur of ``sigma`` px (edges replicated), from [1, 2, 1]/4 passes done with
    array slices: several times faster than ``scipy.ndimage`` filters along rows of wide bands."""
    ds = _dilations(sigma)
    for axis in (0, 1):
        for d in ds:
            if a.shape[axis] <= d:
                continue
            lo = (slice(None),) * axis + (slice(None, d),)
            hi = (slice(None),) * axis + (slice(-d, None),)
            head = (slice(None),) * axis + (slice(None, -d),)
            tail = (slice(None),) * axis + (slice(d, None),)
            out = a * np.float32(2)
            out[tail] += a[head]
            out[head] += a[tail]
            out[lo] += a[lo]
            out[hi] += a[hi]
            out *= np.float32(0.25)
            a = out
    return a


def _blur_reach(sigma: float) -> int:
    return sum(_dilations(sigma))


def _smooth_noise(white: np.ndarray, sigma: float) -> np.ndarray:
    """Unit-variance smooth noise (correlation length ``sigma`` px) from uniform white noise."""
    kern = np.ones(1)
    for d in _dilations(sigma):
        k = np.zeros(2 * d + 1)
        k[[0, d, 2 * d]] = 0.25, 0.5, 0.25
        kern = np.convolve(kern, k)
    out = _blur(white, sigma)
    out *= np.float32(math.sqrt(12) / float((kern**2).sum()))  # white noise std is 1/sqrt(12)
    return out


# ------------------------------------------------------------------------------------ cell shapes


def _cell_polygons(rng: np.random.Generator, x, y, r, aspect, angle, irregular, k: int = 12) -> np.ndarray:
    """Nucleus outlines (n, k, 2): ellipses of radius ``r`` px, elongated by ``aspect`` along
    ``angle``, their radius perturbed by low harmonics scaled by ``irregular`` (pleomorphism)."""
    n = len(x)
    theta = np.linspace(0, 2 * np.pi, k, endpoint=False)[None, :]
    rad = np.ones((n, k), np.float32)
    for harmonic in (2, 3, 4):
        amp = rng.normal(0, 1, (n, 1)) * np.asarray(irregular).reshape(-1, 1) / harmonic
        rad += amp * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi, (n, 1)))
    rad = np.clip(rad, 0.45, None) * np.asarray(r).reshape(-1, 1)
    a = np.sqrt(np.asarray(aspect)).reshape(-1, 1)
    px, py = rad * np.cos(theta) * a, rad * np.sin(theta) / a
    ca, sa = np.cos(np.asarray(angle)).reshape(-1, 1), np.sin(np.asarray(angle)).reshape(-1, 1)
    out = np.empty((n, k, 2), np.float32)
    out[..., 0] = np.asarray(x).reshape(-1, 1) + px * ca - py * sa
    out[..., 1] = np.asarray(y).reshape(-1, 1) + px * sa + py * ca
    return out


def _ellipse(cx, cy, a, b, angle, rng=None, irregular=0.0, k=None) -> np.ndarray:
    """An ellipse outline (k, 2), optionally with a slightly irregular radius."""
    k = k or int(np.clip(2 * np.pi * max(a, b) / 4, 16, 128))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    rad = np.ones(k)
    if rng is not None and irregular:
        for harmonic in (2, 3, 5):
            rad += rng.normal(0, irregular / harmonic) * np.cos(harmonic * t + rng.uniform(0, 2 * np.pi))
    px, py = a * rad * np.cos(t), b * rad * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + px * ca - py * sa, cy + px * sa + py * ca], -1).astype(np.float32)


def _ring_points(a: float, b: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Parameter angles of points evenly spaced (by arc length) on an ellipse with semi-axes a, b."""
    t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    seg = np.hypot(a * np.sin(t), b * np.cos(t)) * (2 * np.pi / 256)
    arc = np.concatenate([[0], np.cumsum(seg)[:-1]])
    n = max(3, int(arc[-1] / spacing))
    targets = (np.arange(n) + rng.uniform(0, 1)) * (arc[-1] + seg[-1]) / n
    return np.interp(targets, arc, t) + rng.normal(0, 0.15 * spacing / max(a, b, 1), n)


class _Layers:
    """Polygons to rasterise per band: epithelium (E), holes/lumens (L) and nuclei (with intensity)."""

    def __init__(self):
        self.polys: dict[str, list[np.ndarray]] = {"E": [], "L": []}
        self.nuclei: list[np.ndarray] = []
        self.intensity: list[np.ndarray] = []

    def add(self, layer: str, poly: np.ndarray) -> None:
        self.polys[layer].append(poly)

    def add_nuclei(self, polys: np.ndarray, intensity: np.ndarray) -> None:
        if len(polys):
            self.nuclei.append(polys)
            self.intensity.append(np.asarray(intensity, np.float32))

    def freeze(self) -> None:
        self.nuc = np.concatenate(self.nuclei) if self.nuclei else np.zeros((0, 12, 2), np.float32)
        self.nuc_val = np.clip(np.concatenate(self.intensity) * 255, 1, 255).astype(np.uint8) if self.nuclei \
            else np.zeros(0, np.uint8)
        self.nuc_y = (self.nuc[..., 1].min(1), self.nuc[..., 1].max(1))
        self.poly_y = {k: (np.array([p[:, 1].min() for p in v]), np.array([p[:, 1].max() for p in v]))
                       for k, v in self.polys.items()}

    def draw(self, r0: int, r1: int, width: int) -> dict[str, np.ndarray]:
        """Rasterise everything that touches rows ``r0:r1``: float32 layers in [0, 1]."""
        from PIL import Image, ImageDraw

        out = {}
        shift = np.array([0, r0], np.float32)
        for name, polys in self.polys.items():
            img = Image.new("L", (width, r1 - r0), 0)
            ymin, ymax = self.poly_y[name]
            if len(polys):
                draw = ImageDraw.Draw(img)
                for i in np.flatnonzero((ymax >= r0) & (ymin < r1)):
                    draw.polygon((polys[i] - shift).ravel().tolist(), fill=255)
            out[name] = np.asarray(img, np.float32) / 255
        img = Image.new("L", (width, r1 - r0), 0)
        draw = ImageDraw.Draw(img)
        ymin, ymax = self.nuc_y
        for i in np.flatnonzero((ymax >= r0) & (ymin < r1)):
            draw.polygon((self.nuc[i] - shift).ravel().tolist(), fill=int(self.nuc_val[i]))
        out["N"] = np.asarray(img, np.float32) / 255
        return out


# ------------------------------------------------------------------------------------ the slide


class _Occupancy:
    """A coarse raster (1/4 scale) of where structures already are, so cells don't collide."""

    Q = 4

    def __init__(self, height: int, width: int):
        from PIL import Image, ImageDraw

        self.img = Image.new("L", (width // self.Q + 1, height // self.Q + 1), 0)
        self.draw = ImageDraw.Draw(self.img)
        self._arr = None

    def mark(self, poly: np.ndarray, value: int = 1) -> None:
        self.draw.polygon((poly / self.Q).ravel().tolist(), fill=value)
        self._arr = None

    def array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.asarray(self.img)
        return self._arr

    def at(self, y, x) -> np.ndarray:
        arr = self.array()
        yi = np.clip((np.asarray(y) / self.Q).astype(int), 0, arr.shape[0] - 1)
        xi = np.clip((np.asarray(x) / self.Q).astype(int), 0, arr.shape[1] - 1)
        return arr[yi, xi]

    def free(self, poly: np.ndarray) -> bool:
        arr = self.array()
        x0, y0 = np.floor(poly.min(0) / self.Q).astype(int)
        x1, y1 = np.ceil(poly.max(0) / self.Q).astype(int) + 1
        return not arr[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].any()


class _Slide:
    """Plan (fields and cells) and render one synthetic slide."""

    def __init__(self, *, pattern: str, seed: int, width: int, height: int, mpp: float):
        self.pattern, self.seed, self.W, self.H, self.mpp = pattern, int(seed), int(width), int(height), float(mpp)
        self.rng = np.random.default_rng([self.seed, 1])
        self.um = 1.0 / self.mpp  # pixels per micron
        self._plan_fields()
        self.layers = _Layers()
        self.occ = _Occupancy(self.H, self.W)
        self._plan_cells()
        self.layers.freeze()

    # ---- fields
    Q = 4  # lattice step (px) of the low-resolution maps used to place cells

    def _lattice(self, field: _Field) -> np.ndarray:
        """``field`` on the low-resolution lattice (every Q-th pixel)."""
        ys = np.arange(0, self.H, self.Q) + self.Q / 2
        xs = np.arange(0, self.W, self.Q) + self.Q / 2
        return field.lattice(ys, xs)

    def _plan_fields(self) -> None:
        rng, H, W, um = self.rng, self.H, self.W, self.um
        side = max(H, W)
        # Per-slide stain/scanner variation (own stream: it does not depend on the pattern).
        stain = np.random.default_rng([self.seed, 2])
        self.gain = stain.uniform(0.9, 1.1)
        self.col_c = np.array([235.0, 110.0, 140.0]) * stain.uniform(0.94, 1.06, 3)  # eosin-like cytoplasm/stroma
        self.col_n = np.array([105.0, 95.0, 250.0]) * stain.uniform(0.94, 1.06, 3)  # Hoechst-like nuclei
        # Tissue: one to three fragments (smooth envelopes) plus multi-scale noise for a ragged outline,
        # pushed down near the slide border so the tissue rarely touches it.
        env = _Grid(np.zeros((int(H / (side / 20)) + 5, int(W / (side / 20)) + 5)), side / 20)
        ny, nx = env.nodes()
        u, v = ny / H, nx / W
        bump = np.full(u.shape, -2.0)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.32, 0.68, 2)
            ay, ax = rng.uniform(0.18, 0.36, 2)
            ang = rng.uniform(0, np.pi)
            du, dv = u - cy, v - cx
            p, q = du * np.cos(ang) + dv * np.sin(ang), -du * np.sin(ang) + dv * np.cos(ang)
            bump = np.maximum(bump, 1 - (p / ay) ** 2 - (q / ax) ** 2)
        rr = np.hypot(u - 0.5, v - 0.5)
        env.values = (bump - 4 * np.clip(rr - 0.4, 0, None) / 0.1).astype(np.float32)
        self.tissue = _Field([(env, 1.0), (_Grid.noise(rng, H, W, side / 6), 0.6),
                              (_Grid.noise(rng, H, W, side / 14), 0.3),
                              (_Grid.noise(rng, H, W, max(50 * um, side / 60)), 0.07)])
        self.holes = _Field([(_Grid.noise(rng, H, W, 90 * um), 1.0), (_Grid.noise(rng, H, W, 35 * um), 0.5)])
        tf = self._lattice(self.tissue)
        self.t_thr = float(np.quantile(tf[::2, ::2], 1 - rng.uniform(0.38, 0.58)))
        hf = self._lattice(self.holes)
        self.h_thr = float(np.quantile(hf[::2, ::2], 1 - rng.uniform(0.015, 0.035)))
        self.map_t = (tf > self.t_thr) & (hf < self.h_thr)

        # Malignant region: most of the tissue, or one focus in benign tissue ("mixed").
        self.malig = None
        self.map_m = np.zeros_like(self.map_t)
        if self.pattern != "benign":
            g = _Grid.noise(rng, H, W, side / 5)
            if self.pattern == "mixed":
                inner = np.flatnonzero(tf.ravel() > np.quantile(tf[self.map_t], 0.6))
                py, px = np.unravel_index(rng.choice(inner), tf.shape)
                gy, gx = g.nodes()
                radius = side * rng.uniform(0.10, 0.16)
                g.values = (0.25 * g.values + 3 * np.exp(-((gy - py * self.Q) ** 2 + (gx - px * self.Q) ** 2)
                                                          / (2 * radius**2))).astype(np.float32)
                frac = rng.uniform(0.15, 0.3)
            else:
                frac = rng.uniform(0.65, 0.85)
            self.malig = _Field([(g, 1.0), (_Grid.noise(rng, H, W, side / 14), 0.25)])
            mf = self._lattice(self.malig)
            self.m_thr = float(np.quantile(mf[self.map_t], 1 - frac))
            self.m_soft = float(0.04 * mf[self.map_t].std())
            self.map_m = mf > self.m_thr
        # Tumour nests vs desmoplastic stroma inside the malignant region.
        self.nest = _Field([(_Grid.noise(rng, H, W, 45 * um), 1.0), (_Grid.noise(rng, H, W, 18 * um), 0.35)])
        nf = self._lattice(self.nest)
        self.n_thr = float(np.quantile(nf[::2, ::2], 1 - rng.uniform(0.5, 0.65)))
        self.map_nest = nf > self.n_thr
        # Collagen fibres are the level lines of psi (one unit per fibre): a ramp in a random direction
        # (fibres 5-9 um apart) warped by smooth noise, so they run wavy and mostly parallel; a second,
        # fainter family at another angle crosses them.
        theta = rng.uniform(0, np.pi)
        self.psi = self._fibre_field(theta, rng.uniform(5, 8) * um)
        self.psi2 = self._fibre_field(theta + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), rng.uniform(6, 9) * um)
        psi = self._lattice(self.psi)
        gy, gx = np.gradient(psi)
        self.map_fibre_angle = (np.arctan2(gy, gx) + np.pi / 2).astype(np.float32)
        self.stroma_var = _Field([(_Grid.noise(rng, H, W, 150 * um), 0.12)])
        self.fibre_break = _Field([(_Grid.noise(rng, H, W, 12 * um), 1.0)])
        self.illum = _Field([(_Grid.noise(rng, H, W, side / 3), 0.05), (_Grid.noise(rng, H, W, side / 12), 0.03)])

    def _fibre_field(self, theta: float, spacing: float) -> _Field:
        rng, H, W, um, side = self.rng, self.H, self.W, self.um, max(self.H, self.W)
        ramp = _Grid(np.zeros((int(H / (side / 8)) + 5, int(W / (side / 8)) + 5)), side / 8)
        gy, gx = ramp.nodes()
        ramp.values = ((gx * np.cos(theta) + gy * np.sin(theta)) / spacing).astype(np.float32)
        warp = 200 * um / spacing
        return _Field([(ramp, 1.0), (_Grid.noise(rng, H, W, 250 * um), 0.8 * warp),
                       (_Grid.noise(rng, H, W, 60 * um), 0.2 * warp)])

    def _lookup(self, arr: np.ndarray, y, x) -> np.ndarray:
        yi = np.clip((np.asarray(y) / self.Q).astype(np.int64), 0, arr.shape[0] - 1)
        xi = np.clip((np.asarray(x) / self.Q).astype(np.int64), 0, arr.shape[1] - 1)
        return arr[yi, xi]

    def tissue_at(self, y, x) -> np.ndarray:
        return self._lookup(self.map_t, y, x)

    def malig_at(self, y, x) -> np.ndarray:
        return self._lookup(self.map_m, y, x)

    def nest_at(self, y, x) -> np.ndarray:
        return self._lookup(self.map_m & self.map_nest, y, x)

    def fibre_angle(self, y, x) -> np.ndarray:
        return self._lookup(self.map_fibre_angle, y, x)

    # ---- cells
    def _uniform(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rng.uniform(0, self.H, n), self.rng.uniform(0, self.W, n)

    def _jittered(self, spacing: float, jitter: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.meshgrid(np.arange(spacing / 2, self.H, spacing), np.arange(spacing / 2, self.W, spacing),
                             indexing="ij")
        ys = ys.ravel() + self.rng.uniform(-jitter, jitter, ys.size) * spacing
        xs = xs.ravel() + self.rng.uniform(-jitter, jitter, xs.size) * spacing
        return ys, xs

    def _area_px(self) -> float:
        return float(self.map_t.mean()) * self.H * self.W

    def _plan_cells(self) -> None:
        area = self._area_px()
        benign_area = float((self.map_t & ~self.map_m).mean()) * self.H * self.W
        self._plan_fat(area)
        self._plan_ducts(benign_area)
        self._plan_lobules(benign_area)
        self._plan_lymphoid()
        self._plan_tumour()
        self._plan_stroma_cells()

    def _duct(self, cx, cy, a, b, ang, thick) -> None:
        """A duct/acinus: lumen, a ring of luminal cells, an outer ring of flat myoepithelial cells."""
        rng, um = self.rng, self.um
        outer = _ellipse(cx, cy, a, b, ang, rng, 0.04)
        self.layers.add("E", outer)
        la, lb = max(a - thick, 2 * um), max(b - thick, 2 * um)
        self.layers.add("L", _ellipse(cx, cy, la, lb, ang, rng, 0.06))
        self.occ.mark(_ellipse(cx, cy, a + 3 * um, b + 3 * um, ang))
        ca, sa = math.cos(ang), math.sin(ang)
        for frac, spacing, r, aspect, tang, val in ((0.62, 6.5, 2.6, 1.4, False, 0.85),
                                                    (0.12, 12.0, 2.8, 2.6, True, 0.7)):
            ra, rb = a - frac * thick, b - frac * thick
            t = _ring_points(ra, rb, spacing * um, rng)
            n = len(t)
            px, py = ra * np.cos(t), rb * np.sin(t)
            x, y = cx + px * ca - py * sa, cy + px * sa + py * ca
            normal = np.arctan2(ra * np.sin(t), rb * np.cos(t)) + ang
            angle = normal + (np.pi / 2 if tang else 0.0)
            rr = r * um * rng.normal(1, 0.07, n)
            polys = _cell_polygons(rng, x, y, rr, aspect * rng.normal(1, 0.05, n), angle, np.full(n, 0.05))
            self.layers.add_nuclei(polys, val * rng.normal(1, 0.06, n))

    def _free_centres(self, n: int, need_benign: bool = True) -> tuple[np.ndarray, np.ndarray]:
        y, x = self._uniform(n)
        ok = self.tissue_at(y, x)
        if need_benign:
            ok &= ~self.malig_at(y, x)
        return y[ok], x[ok]

    def _probe_free(self, cx, cy, a, b, ang, benign: bool = True) -> bool:
        """Cheap test that an ellipse lies in (benign) tissue and clear of earlier structures:
        its centre and 8 points of its outline."""
        t = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        px, py = a * np.cos(t), b * np.sin(t)
        x = np.append(cx + px * math.cos(ang) - py * math.sin(ang), cx)
        y = np.append(cy + px * math.sin(ang) + py * math.cos(ang), cy)
        ok = self.tissue_at(y, x).all() and not self.occ.at(y, x).any()
        return bool(ok and not (benign and self.malig_at(y, x).any()))

    def _plan_ducts(self, benign_area: float) -> None:
        rng, um = self.rng, self.um
        target, covered = benign_area * rng.uniform(0.1, 0.18), 0.0
        for cy, cx in zip(*self._free_centres(4000)):
            if covered >= target:
                break
            a = rng.uniform(28, 75) * um
            b = a * rng.uniform(0.55, 1.0)
            ang = rng.uniform(0, np.pi)
            if not self._probe_free(cx, cy, a + 4 * um, b + 4 * um, ang) \
                    or not self.occ.free(_ellipse(cx, cy, a + 4 * um, b + 4 * um, ang)):
                continue
            self._duct(cx, cy, a, b, ang, rng.uniform(11, 15) * um)
            covered += np.pi * a * b

    def _plan_lobules(self, benign_area: float) -> None:
        """Terminal duct lobular units: clusters of small, closely packed acini."""
        rng, um = self.rng, self.um
        target, covered = benign_area * rng.uniform(0.1, 0.18), 0.0
        for cy, cx in list(zip(*self._free_centres(600)))[:40]:
            if covered >= target:
                break
            radius = rng.uniform(60, 130) * um
            n_try = int(3 * (radius / (18 * um)) ** 2)
            rr = radius * np.sqrt(rng.uniform(size=n_try))
            phi = rng.uniform(0, 2 * np.pi, n_try)
            ay, ax = cy + rr * np.sin(phi), cx + rr * np.cos(phi)
            a = rng.uniform(12, 20, n_try) * um
            b = a * rng.uniform(0.7, 1.0, n_try)
            ang = rng.uniform(0, np.pi, n_try)
            ok = self.tissue_at(ay, ax) & ~self.malig_at(ay, ax) & (self.occ.at(ay, ax) == 0)
            placed: list[int] = []
            for i in np.flatnonzero(ok):
                if any(math.hypot(ax[i] - ax[j], ay[i] - ay[j]) < a[i] + a[j] + 1.5 * um for j in placed):
                    continue
                if self._probe_free(ax[i], ay[i], a[i] + 1.5 * um, b[i] + 1.5 * um, ang[i]):
                    placed.append(i)
            for i in placed:
                self._duct(ax[i], ay[i], a[i], b[i], ang[i], rng.uniform(8, 10) * um)
                covered += np.pi * a[i] * b[i]
            _log.debug("lobule with %d acini", len(placed))

    def _plan_fat(self, area: float) -> None:
        """Clusters of adipocytes: large empty cells with thin walls (in both classes)."""
        rng, um = self.rng, self.um
        target, covered = area * rng.uniform(0.03, 0.08), 0.0
        for cy, cx in zip(*self._free_centres(400, need_benign=False)):
            if covered >= target:
                break
            radius = rng.uniform(80, 180) * um
            cell = rng.uniform(35, 55) * um
            gy, gx = np.meshgrid(np.arange(-radius, radius, cell * 0.87), np.arange(-radius, radius, cell),
                                 indexing="ij")
            gx = gx + (np.round(gy / (cell * 0.87)) % 2) * cell / 2
            gy = gy.ravel() + cy + rng.normal(0, 0.06 * cell, gy.size)
            gx = gx.ravel() + cx + rng.normal(0, 0.06 * cell, gx.size)
            keep = (np.hypot(gy - cy, gx - cx) < radius * rng.uniform(0.7, 1.0, gy.size)) & self.tissue_at(gy, gx) \
                & (self.occ.at(gy, gx) == 0)
            polys = []
            for y, x in zip(gy[keep], gx[keep]):
                r = cell / 2 - rng.uniform(0.8, 1.6) * um
                polys.append(_ellipse(x, y, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi), rng, 0.1, k=24))
                covered += np.pi * r * r
            for poly in polys:
                self.layers.add("L", poly)
                self.occ.mark(poly)

    def _plan_lymphoid(self) -> None:
        """Lymphocyte aggregates: dense small round bright nuclei (both classes, more in benign)."""
        rng, um = self.rng, self.um
        n = rng.integers(1, 4) if self.pattern != "malignant" else rng.integers(0, 2)
        for cy, cx in list(zip(*self._free_centres(200, need_benign=False)))[:n]:
            radius = rng.uniform(40, 90) * um
            y, x = self._jittered(6.5 * um, 0.4)
            sel = np.hypot(y - cy, x - cx) < radius * (1 + 0.15 * np.sin(3 * np.arctan2(y - cy, x - cx)))
            y, x = y[sel], x[sel]
            keep = self.tissue_at(y, x) & (self.occ.at(y, x) == 0)
            self._lymphocytes(y[keep], x[keep])

    def _lymphocytes(self, y, x) -> None:
        rng, n = self.rng, len(y)
        polys = _cell_polygons(rng, x, y, 2.4 * self.um * rng.normal(1, 0.08, n), rng.uniform(1, 1.15, n),
                               rng.uniform(0, np.pi, n), np.full(n, 0.04))
        self.layers.add_nuclei(polys, rng.uniform(0.85, 1.0, n))

    def _plan_tumour(self) -> None:
        """Nests/sheets of enlarged, pleomorphic, crowded nuclei with a few abortive lumens."""
        if self.malig is None:
            return
        rng, um = self.rng, self.um
        # Abortive (cribriform) lumens first so nuclei avoid them.
        y, x = self._uniform(int(self.H * self.W / (110 * um) ** 2))
        sel = self.nest_at(y, x) & self.tissue_at(y, x)
        for cy, cx in zip(y[sel], x[sel]):
            r = rng.uniform(5, 13) * um
            poly = _ellipse(cx, cy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), rng, 0.2, k=20)
            if self.occ.free(poly):
                self.layers.add("L", poly)
                self.occ.mark(_ellipse(cx, cy, r + 3 * um, r + 3 * um, 0.0, k=20))
        y, x = self._jittered(13 * um, 0.45)
        keep = self.nest_at(y, x) & self.tissue_at(y, x) & (self.occ.at(y, x) == 0)
        self._tumour_cells(y[keep], x[keep])

    def _tumour_cells(self, y, x) -> None:
        rng, n = self.rng, len(y)
        r = 4.2 * self.um * rng.lognormal(0, 0.25, n)
        polys = _cell_polygons(rng, x, y, r, 1 + np.abs(rng.normal(0, 0.35, n)), rng.uniform(0, np.pi, n),
                               rng.uniform(0.1, 0.35, n))
        value = np.clip(rng.normal(0.85, 0.1, n), 0.5, 1.0)
        self.layers.add_nuclei(polys, value)
        # Vesicular chromatin (paler centre under a bright rim) and one or two prominent nucleoli.
        centre = np.stack([x, y], -1)[:, None, :].astype(np.float32)
        inner = centre + rng.uniform(0.55, 0.75, (n, 1, 1)).astype(np.float32) * (polys - centre)
        self.layers.add_nuclei(inner, value * rng.uniform(0.5, 0.7, n))
        for _ in range(2):
            some = rng.uniform(size=n) < 0.6
            k = int(some.sum())
            off = rng.normal(0, 0.25, (k, 2)) * r[some, None]
            self.layers.add_nuclei(_cell_polygons(rng, x[some] + off[:, 0], y[some] + off[:, 1],
                                                  rng.uniform(0.6, 1.0, k) * self.um, np.ones(k), np.zeros(k),
                                                  np.full(k, 0.1)), np.ones(k))

    def _plan_stroma_cells(self) -> None:
        """Fibroblasts along the fibres, scattered lymphocytes, and in malignant stroma single
        infiltrating tumour cells."""
        rng, um = self.rng, self.um
        y, x = self._uniform(int(self.H * self.W / (24 * um) ** 2))
        ok = self.tissue_at(y, x) & (self.occ.at(y, x) == 0)
        y, x = y[ok], x[ok]
        mal = self.malig_at(y, x)
        nest = self._lookup(self.map_nest, y, x)
        keep = np.where(mal, ~nest, rng.uniform(size=len(y)) < 0.7)
        y, x, mal = y[keep], x[keep], mal[keep]
        kind = rng.uniform(size=len(y))
        fib = kind < np.where(mal, 0.6, 0.85)
        n = int(fib.sum())
        polys = _cell_polygons(rng, x[fib], y[fib], 3.0 * um * rng.normal(1, 0.1, n), rng.uniform(2.2, 3.5, n),
                               self.fibre_angle(y[fib], x[fib]), np.full(n, 0.06))
        self.layers.add_nuclei(polys, rng.uniform(0.6, 0.85, n))
        lym = (kind >= np.where(mal, 0.6, 0.85)) & (kind < np.where(mal, 0.8, 1.01))
        self._lymphocytes(y[lym], x[lym])
        single = mal & (kind >= 0.8)
        self._tumour_cells(y[single], x[single])

    # ---- rendering
    def _band_fields(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """Cytoplasm/stroma and nuclear signal (about [0, 1]) and the malignant weight on rows
        r0:r1, plus the region sums used to equalise the classes' mean colour."""
        W, H, um = self.W, self.H, self.um
        R0, R1 = max(0, r0 - self.halo), min(H, r1 + self.halo)
        t = ((self.tissue.rows(R0, R1, W) > self.t_thr) & (self.holes.rows(R0, R1, W) < self.h_thr)).astype(np.float32)
        m = self._malig_rows(R0, R1)
        nest = m * np.clip((self.nest.rows(R0, R1, W) - self.n_thr) * 20 + 0.5, 0, 1)
        lay = self.layers.draw(R0, R1, W)
        chrom = _smooth_noise(self.noise_chrom.rows(R0, R1), 0.3 * um + 0.4)
        mottle = _smooth_noise(self.noise_mottle.rows(R0, R1), 1.5 * um)
        # Collagen: bright wavy fibres, broken into segments, a second fainter family crossing them.
        brk = self.fibre_break.rows(R0, R1, W)
        fib = np.sin(2 * np.pi * self.psi.rows(R0, R1, W) + 0.8 * mottle)
        np.clip(fib, 0, 1, out=fib)
        fib *= fib
        fib *= np.clip(0.35 + 0.8 * brk + 0.15 * chrom, 0, 1)
        fib2 = np.sin(2 * np.pi * self.psi2.rows(R0, R1, W) + 0.8 * mottle)
        np.clip(fib2, 0, 1, out=fib2)
        fib2 *= fib2 * fib2 * np.clip(0.1 - 0.8 * brk, 0, 0.6)
        np.maximum(fib, fib2, out=fib)
        stroma = (0.2 + 0.65 * fib + 0.05 * mottle) * (1 + self.stroma_var.rows(R0, R1, W))
        epi = np.maximum(lay["E"], nest)
        cyto = (0.58 - 0.17 * nest) + 0.1 * np.tanh(mottle)
        area = t.copy()  # tissue area including lumens and fat: what a patch of tissue covers
        t *= 1 - lay["L"]
        c = t * (stroma + epi * (cyto - stroma))
        n = lay["N"] * np.clip(0.78 + 0.22 * chrom, 0.3, 1.2) * t
        c *= 1 - 0.9 * np.clip(n * 2.0, 0, 1)  # nuclei hide the cytoplasm signal under them
        lo, hi = r0 - R0, r1 - R0
        light = (1 + self.illum.rows(r0, r1, W)) * np.float32(self.gain)  # uneven illumination, stain
        c = _blur(c, 0.45 * um)[lo:hi] * light  # optics
        n = _blur(n, 0.35 * um)[lo:hi] * light
        area, m = area[lo:hi], m[lo:hi]
        wm = area * m
        wb = area - wm
        sums = {"wb": float(wb.sum()), "wm": float(wm.sum()), "cb": float(np.vdot(c, wb)),
                "cm": float(np.vdot(c, wm)), "nb": float(np.vdot(n, wb)), "nm": float(np.vdot(n, wm))}
        return c, n, m, sums

    def _malig_rows(self, r0: int, r1: int) -> np.ndarray:
        if self.malig is None:
            return np.zeros((r1 - r0, self.W), np.float32)
        return np.clip((self.malig.rows(r0, r1, self.W) - self.m_thr) / self.m_soft + 0.5, 0, 1)

    def render(self, band: int = 256) -> np.ndarray:
        """The RGB image, rendered in bands of ``band`` rows (the result does not depend on it)."""
        H, W, um = self.H, self.W, self.um
        # Rows a band needs beyond its own: texture filters, then the optical blur.
        self.halo = max(_blur_reach(1.5 * um), _blur_reach(0.3 * um + 0.4)) + _blur_reach(0.45 * um) + 2
        self.noise_chrom = _NoiseRows(self.seed, 11, W)
        self.noise_mottle = _NoiseRows(self.seed, 12, W)
        # Pass 1: signals, quantised to 8 bits (a few bytes per pixel in all), and region sums.
        c_all = np.empty((H, W), np.uint8)
        n_all = np.empty((H, W), np.uint8)
        m_all = np.zeros((H, W), np.uint8) if self.malig is not None else None
        tot: dict[str, float] = {}
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            c, n, m, sums = self._band_fields(r0, r1)
            c_all[r0:r1] = np.clip(c * 255 + 0.5, 0, 255)
            n_all[r0:r1] = np.clip(n * 255 + 0.5, 0, 255)
            if m_all is not None:
                m_all[r0:r1] = m * 255 + 0.5
            for k, v in sums.items():
                tot[k] = tot.get(k, 0.0) + v
        # Equalise mean cytoplasm and nuclear signal of benign and malignant tissue towards fixed
        # targets (within limits, so crowded malignant nuclei are not dimmed unnaturally).
        gains = {}
        for region in ("b", "m"):
            w = max(tot[f"w{region}"], 1.0)
            gains[f"c{region}"] = float(np.clip(_TARGET_C / max(tot[f"c{region}"] / w, 1e-3), 0.7, 1.6))
            gains[f"n{region}"] = float(np.clip(_TARGET_N / max(tot[f"n{region}"] / w, 1e-3), 0.75, 1.6))
        _log.debug("region gains %s, sums %s", gains, tot)
        self.gains = gains
        # Pass 2: colour (two fluorophores, additive) and camera noise.
        img = np.empty((H, W, 3), np.uint8)
        bg = np.array([5.0, 5.0, 8.0], np.float32)
        camera = _NoiseRows(self.seed, 13, W)
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            gc, gn = np.float32(gains["cb"] / 255), np.float32(gains["nb"] / 255)
            if m_all is not None:
                m = m_all[r0:r1].astype(np.float32) / 255
                gc = gc + m * np.float32((gains["cm"] - gains["cb"]) / 255)
                gn = gn + m * np.float32((gains["nm"] - gains["nb"]) / 255)
            c = c_all[r0:r1] * gc
            n = n_all[r0:r1] * gn
            # One luminance-like noise plane, scaled per channel: dark floor plus a shot-like part.
            noise = camera.rows(r0, r1) * np.float32(math.sqrt(12))
            for ch in range(3):
                v = c * np.float32(self.col_c[ch])
                v += n * np.float32(self.col_n[ch])
                v += noise * (1.5 + 0.04 * v) + bg[ch]
                np.clip(v, 0, 255, out=v)
                img[r0:r1, :, ch] = v
        return img


# Target mean cytoplasm/stroma and nuclear signal over the tissue area (lumens and fat included, as
# in a patch), in fractions of full scale.
_TARGET_C = 0.30
_TARGET_N = 0.10


def _check_pattern(label: str, pattern: str | None) -> str:
    if label not in ("benign", "malignant"):
        raise ValueError(f"unknown demo label {label!r}; use benign or malignant")
    pattern = pattern or label
    if pattern not in PATTERNS:
        raise ValueError(f"unknown demo pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
    if _LABEL_OF[pattern] != label:
        raise ValueError(f"demo pattern {pattern!r} does not fit label {label!r}")
    return pattern


def render_slide(*, label: str, pattern: str | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 mpp: float = 0.5) -> np.ndarray:
    """Level 0 of one synthetic slide, (height, width, 3) uint8; deterministic given the arguments."""
    pattern = _check_pattern(label, pattern)
    if width < 64 or height < 64:
        raise ValueError(f"demo slides must be at least 64x64 pixels, got {width}x{height}")
    return _Slide(pattern=pattern, seed=seed, width=width, height=height, mpp=mpp).render()


def generate_slide(out_path: str | os.PathLike, *, label: str, pattern: str | None = None, seed: int = 0,
                   width: int = 6144, height: int = 6144, mpp: float = 0.5, compression: str = "deflate") -> Path:
    """Render one synthetic slide and write it as a pyramidal TIFF with MPP, atomically."""
    start = time.perf_counter()
    image = render_slide(label=label, pattern=pattern, seed=seed, width=width, height=height, mpp=mpp)
    rendered = time.perf_counter()
    write_pyramid_tiff(out_path, image, mpp, compression=compression, description="duvflow synthetic DUV demo slide")
    _log.info("demo slide %s: %dx%d px at %.3g um/px, rendered in %.1f s, written in %.1f s", out_path, width,
              height, mpp, rendered - start, time.perf_counter() - rendered)
    return Path(out_path)
