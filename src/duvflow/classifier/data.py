"""Training and evaluation data of the classifier: real patches + an optional synthetic set.

Real patches come from the slides' packed stores (400 px at paper scale), synthetic patches from
the PNGs of one LDM condition (``synthetic/{cond}/fold_{fold}/`` + ``manifest.parquet``); both are
resized with antialiasing to the classifier's input size, then augmented (flips, rot90, colour
jitter). Every sample's augmentation is drawn from its own seed, fixed with the step's batch
(:func:`batch_order`), so a resumed run sees exactly the data an uninterrupted run would (with
any number of workers).

:func:`check_no_leakage` enforces the evaluation's rule: no patch of a fold's test slides, real or
as the source of a synthetic patch, reaches that fold's training or validation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duvflow.classifier.config import ClassifierAugmentConfig
from duvflow.core.labels import label_to_int
from duvflow.core.patches import resize_batch, to_float_tensor
from duvflow.core.stain import stain_jitter
from duvflow.core.synthetic import nested_subset, synthetic_count
from duvflow.slides.store import PatchStore
from duvflow.train.batches import StepBatches

__all__ = [
    "LeakageError",
    "PatchImages",
    "augment",
    "batch_keys",
    "batch_order",
    "check_no_leakage",
    "epoch_batches",
    "load_synthetic",
]

_log = logging.getLogger(__name__)


class LeakageError(ValueError):
    """A fold's test slide (or a synthetic patch made from one) would enter its training."""


def load_synthetic(path: str | os.PathLike, fraction: float | None = None,
                   real_labels: np.ndarray | None = None) -> pd.DataFrame:
    """The synthetic set's manifest (``path``: its folder or ``manifest.parquet``) with absolute
    ``file`` paths and ``label_int``; every listed PNG must exist.

    With ``fraction`` (an arm of a fraction sweep), only the nested, stratified subset that makes up
    that share beside the real training patches ``real_labels`` (``label_int``):
    :func:`duvflow.core.synthetic.nested_subset` of ``synthetic_count(len(real_labels), fraction)``
    patches, at most the whole set (``sampling.max_synthetic`` may have capped it).
    """
    path = Path(path)
    manifest = path / "manifest.parquet" if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"synthetic set {path}: {manifest.name} is missing")
    df = pd.read_parquet(manifest)
    missing_cols = {"file", "label", "source_slide"} - set(df.columns)
    if missing_cols:
        raise ValueError(f"{manifest} lacks column(s) {', '.join(sorted(missing_cols))}")
    if fraction is not None:
        df = _fraction_subset(df, manifest, fraction, real_labels)
    df = df.copy()
    df["file"] = [str(f if Path(f).is_absolute() else manifest.parent / f) for f in df["file"]]
    absent = [f for f in df["file"] if not Path(f).is_file()]
    if absent:
        raise FileNotFoundError(f"{manifest}: {len(absent)} listed image(s) do not exist, e.g. {absent[0]}")
    df["label_int"] = label_to_int(df["label"]) if len(df) else np.zeros(0, np.int64)
    df["source_slide"] = df["source_slide"].astype(str)
    return df


def _fraction_subset(df: pd.DataFrame, manifest: Path, fraction: float, real_labels) -> pd.DataFrame:
    """The rows of the set ``df`` for the arm at ``fraction`` (see :func:`load_synthetic`)."""
    if real_labels is None:
        raise ValueError("a synthetic fraction needs the real training labels it is a share beside")
    n = synthetic_count(len(real_labels), fraction)
    if n >= len(df):
        if n > len(df):
            _log.warning("%s: %d synthetic patches for fraction %g, the set has %d (sampling.max_synthetic?): "
                         "all are used", manifest.parent, n, fraction, len(df))
        return df
    labels = label_to_int(df["label"])
    rows = nested_subset(labels, np.asarray(real_labels), n)
    _log.info("%s: %d of %d synthetic patches for fraction %g (%s)", manifest.parent, len(rows), len(df), fraction,
              ", ".join(f"label {k}: {int((labels[rows] == k).sum())}" for k in np.unique(labels)))
    return df.iloc[rows].reset_index(drop=True)


def check_no_leakage(split: pd.DataFrame, fold: str, train_slides, val_slides, synthetic: pd.DataFrame | None) -> None:
    """Raise :class:`LeakageError` when a test slide of ``fold`` is among the training or validation
    slides, or is (or is unknown as) the source of a synthetic training patch."""
    split = split[split["fold"].astype(str) == str(fold)]
    test = set(split.loc[split["role"] == "test", "slide_id"])
    train = set(split.loc[split["role"] == "train", "slide_id"])
    leaked = sorted(test & (set(train_slides) | set(val_slides)))
    if leaked:
        raise LeakageError(f"fold {fold}: test slide(s) {', '.join(leaked[:10])} in the training/validation data")
    if not set(train_slides) <= train:
        raise LeakageError(f"fold {fold}: training data from slides that are not training slides of the fold: "
                           f"{', '.join(sorted(set(train_slides) - train)[:10])}")
    if synthetic is not None and len(synthetic):
        sources = set(synthetic["source_slide"])
        bad = sorted(sources & test)
        if bad:
            raise LeakageError(f"fold {fold}: synthetic patches were generated from test slide(s) {', '.join(bad[:10])}")
        unknown = sorted(sources - set(split["slide_id"]))
        if unknown:
            raise LeakageError(f"fold {fold}: synthetic patches from slides outside the fold's splits: "
                               f"{', '.join(unknown[:10])}")
        from_val = sorted(sources - train)
        if from_val:
            _log.warning("fold %s: %d synthetic patches come from validation slides (%s); model selection is then "
                         "optimistic", fold, int(synthetic["source_slide"].isin(from_val).sum()), ", ".join(from_val[:5]))


def augment(image: torch.Tensor, cfg: ClassifierAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips, rot90 and colour jitter of a float (3, H, W) image in [0, 1], drawn from ``generator``."""
    import torchvision.transforms.v2.functional as TF

    def uniform(width: float) -> float:
        return float(torch.empty(()).uniform_(-width, width, generator=generator))

    if cfg.hflip and torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    if cfg.vflip and torch.rand((), generator=generator) < 0.5:
        image = image.flip(-2)
    if cfg.rot90:
        image = torch.rot90(image, int(torch.randint(4, (), generator=generator)), dims=(-2, -1))
    # colour jitter (brightness, contrast, saturation as factors 1 +- x; hue as a shift)
    factors = [uniform(cfg.brightness), uniform(cfg.contrast), uniform(cfg.saturation), uniform(cfg.hue)]
    # stain jitter first: stains vary in the tissue, colour jitter in the imaging
    image = stain_jitter(image[None], generator, space=cfg.stain, scale=cfg.stain_scale, shift=cfg.stain_shift)[0]
    if cfg.brightness:
        image = TF.adjust_brightness(image, 1 + factors[0])
    if cfg.contrast:
        image = TF.adjust_contrast(image, 1 + factors[1])
    if cfg.saturation:
        image = TF.adjust_saturation(image, 1 + factors[2])
    if cfg.hue:
        image = TF.adjust_hue(image, factors[3])
    return image.clamp_(0, 1).contiguous()


class PatchImages:
    """Real patches (rows of a patch index) followed by synthetic PNGs, resized to ``size``.

    Resized images are rounded to uint8 whether or not they are preloaded, so training with and
    without the in-memory cache (and prediction) see identical pixels.

    ``dataset[i]`` or ``dataset[(i, seed)]`` -> ``(image, label_int)``; with a seed (and an
    ``augment`` config) the image is augmented with that seed.
    """

    def __init__(self, real: pd.DataFrame | None, synthetic: pd.DataFrame | None, size: int,
                 augment_cfg: ClassifierAugmentConfig | None = None):
        real = real if real is not None else pd.DataFrame(columns=["store", "patch_index", "label_int"])
        synthetic = synthetic if synthetic is not None else pd.DataFrame(columns=["file", "label_int"])
        self._stores_paths = real["store"].to_numpy()
        self._rows = real["patch_index"].to_numpy()
        self._files = synthetic["file"].to_numpy()
        self.n_real = len(real)
        self.labels = np.concatenate([real["label_int"].to_numpy(np.int64), synthetic["label_int"].to_numpy(np.int64)])
        self.size = size
        self.augment_cfg = augment_cfg
        self._stores: dict[str, PatchStore] = {}
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:
        """The uint8 (H, W, 3) image ``i`` at its stored size."""
        if i < self.n_real:
            path = self._stores_paths[i]
            store = self._stores.get(path)
            if store is None:
                store = self._stores[path] = PatchStore(path)
            return store[int(self._rows[i])]
        from PIL import Image

        with Image.open(self._files[i - self.n_real]) as im:
            return np.array(im.convert("RGB"))

    def resized(self, i: int) -> torch.Tensor:
        """Image ``i`` resized (antialiased) to ``size`` and rounded to uint8 (3, size, size), as a
        resized PNG would be; from memory after :meth:`preload`."""
        if self._cache is not None:
            return self._cache[i]
        image = resize_batch(to_float_tensor(self.read(int(i)))[None], self.size)[0]
        return image.mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    def preload(self, desc: str = "preload") -> PatchImages:
        """Read and resize every image once and keep them in memory (N x 3 x size x size bytes):
        epochs then cost no decoding. DataLoader workers share the cache copy-on-write."""
        from duvflow.core.runtime import progress

        cache = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8)
        for i in progress(range(len(self)), desc=desc, unit="patch", leave=False):
            cache[i] = self.resized(i)
        self._cache = cache
        self._stores.clear()
        return self

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self.resized(int(i)).float().div_(255)
        if seed is not None and self.augment_cfg is not None:
            image = augment(image, self.augment_cfg, torch.Generator().manual_seed(int(seed)))
        return image, int(self.labels[i])


def batch_order(labels: np.ndarray, batch_size: int, *, seed: int, balance: bool) -> StepBatches:
    """The training batches of every step, a function of ``(seed, step)`` (resumable exactly).

    ``balance`` draws samples with replacement with probability inversely proportional to their
    class size (each class then contributes equally on average); otherwise permutations. An epoch
    has ``max(1, n // batch_size)`` full batches of at most ``n`` samples (the remainder is dropped;
    it differs each epoch).
    """
    n = len(labels)
    if n == 0:
        raise ValueError("the training set is empty")
    weights = None
    if balance:
        counts = np.bincount(labels, minlength=2).astype(float)
        weights = 1.0 / counts[labels]
    return StepBatches(n, min(batch_size, n), seed, weights=weights)


def batch_keys(order: StepBatches, step: int) -> list[tuple[int, int]]:
    """Step ``step``'s batch as :class:`PatchImages` keys: ``(index, augmentation seed)`` pairs."""
    return list(zip(order(step).tolist(), order.seeds(step), strict=True))


def epoch_batches(labels: np.ndarray, batch_size: int, *, seed: int, epoch: int,
                  balance: bool) -> list[list[tuple[int, int]]]:
    """The batch keys of every step of epoch ``epoch`` (see :func:`batch_order`)."""
    order = batch_order(labels, batch_size, seed=seed, balance=balance)
    return [batch_keys(order, s) for s in range(epoch * order.per_epoch, (epoch + 1) * order.per_epoch)]
