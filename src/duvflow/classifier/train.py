"""Training of the patch classifier for one fold and arm (``train_classifier``).

One readable loop in the diffusers-example order: seed -> data (real training patches of the fold
+ the arm's synthetic set; leakage check) -> model -> optimizer -> schedule -> resume -> epochs of
steps (autocast, clip, step, log, checkpoint every N) -> validation on the fold's validation
slides with a slide-level metric (model selection) -> final save of the selected weights.

Resumable: numbered checkpoints (model, optimizer, best weights so far, history, step) go to an
undeclared sibling folder via :class:`duvflow.train.checkpoint.CheckpointManager`; a rerun with the same
settings continues from the newest one. Because every epoch's sample order and every sample's
augmentation are functions of ``(seed, epoch)``, a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from duvflow.classifier.data import AugmentConfig, PatchImages, check_no_leakage, epoch_batches, load_synthetic
from duvflow.classifier.model import CLASSES, build_classifier
from duvflow.classifier.predict import predict_probs
from duvflow.core.config import from_dict
from duvflow.core.io import write_csv, write_json
from duvflow.core.patches import attach_split, load_patch_index
from duvflow.core.provenance import code_version
from duvflow.core.runtime import autocast, configure_threads, progress, seed_everything
from duvflow.evaluate.evaluation import roc_auc
from duvflow.ssl.schedules import cosine_value
from duvflow.train.checkpoint import CheckpointManager, restore_rng_state, rng_state, save_weights
from duvflow.train.distributed import all_reduce_mean, init_distributed, shard_batches, wrap_model

__all__ = ["ClassifierConfig", "classifier_seed", "train_classifier"]

_log = logging.getLogger(__name__)
SELECTION_METRICS = ("slide_auc", "slide_loss")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The ``classifier`` config section (see the schema for each key's meaning)."""

    model: str = "vit_base_patch16_224"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    weights: str | None = None
    hub: bool = False
    img_size: int = 224
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-5
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "sampler"
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    selection_metric: str = "slide_auc"
    val_max_patches_per_slide: int | None = None
    eval_batch_size: int = 128
    preload: bool = False
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    num_workers: int = 4
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self):
        if self.balance not in ("sampler", "loss", "none"):
            raise ValueError(f"classifier.balance must be sampler, loss or none, got {self.balance!r}")
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(f"classifier.selection_metric must be one of {SELECTION_METRICS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("classifier.epochs and classifier.batch_size must be >= 1")


def classifier_seed(seed: int, fold: str) -> int:
    """The training seed of a fold: the same for every arm (arms differ only in their data)."""
    return (int(seed) + zlib.crc32(f"classifier/fold_{fold}".encode())) % (2**31)


def _select_val(index: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """Validation patches, at most ``cap`` per slide (a fixed random subset) to bound validation time."""
    if not cap:
        return index.reset_index(drop=True)
    parts = [g if len(g) <= cap else g.sample(cap, random_state=seed) for _, g in index.groupby("slide_id", sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True) if parts else index.iloc[:0]


def _validate(model, val: pd.DataFrame, images: PatchImages, cfg: ClassifierConfig, device) -> dict[str, float]:
    """Patch- and slide-level validation metrics (slide score = mean patch probability)."""
    if len(val) == 0:
        return {"val_patch_loss": math.nan, "val_patch_accuracy": math.nan, "val_slide_auc": math.nan,
                "val_slide_loss": math.nan}
    probs = predict_probs(model, images, batch_size=cfg.eval_batch_size, device=device, bf16=cfg.bf16,
                          num_workers=cfg.num_workers, desc="validate").astype(np.float64)
    y = val["label_int"].to_numpy()
    eps = 1e-6
    p = np.clip(probs, eps, 1 - eps)
    slides = pd.DataFrame({"slide_id": val["slide_id"], "p": probs, "y": y}).groupby("slide_id").mean()
    ps = np.clip(slides["p"].to_numpy(), eps, 1 - eps)
    return {
        "val_patch_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "val_patch_accuracy": float(np.mean((probs > 0.5) == y)),
        "val_slide_auc": roc_auc(slides["y"].round().astype(int), slides["p"]),
        "val_slide_loss": float(-np.mean(slides["y"] * np.log(ps) + (1 - slides["y"]) * np.log(1 - ps))),
    }


def _selection_key(metrics: dict[str, float], metric: str) -> tuple[float, float]:
    """Larger is better: slide AUC (when defined) first, then the lower slide-level loss."""
    auc = metrics["val_slide_auc"] if metric == "slide_auc" else math.nan
    loss = metrics["val_slide_loss"]
    return (-math.inf if math.isnan(auc) else auc, -math.inf if math.isnan(loss) else -loss)


def train_classifier(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str],
                     splits: str | os.PathLike, fold: str, arm: str, model_output: str | os.PathLike,
                     meta_output: str | os.PathLike, metrics_output: str | os.PathLike,
                     checkpoint_dir: str | os.PathLike, config: dict, seed: int,
                     synthetic: str | os.PathLike | None = None, tiling: dict | None = None,
                     threads: int | None = None) -> dict:
    """Train the classifier of ``arm`` on ``fold``; write weights, metadata JSON and metrics CSV.

    ``synthetic`` is the arm's synthetic set (folder with ``manifest.parquet``; None for ``real``).
    ``tiling`` (the tiling config) is stored in the metadata so new slides can be tiled alike.
    """
    cfg = from_dict(ClassifierConfig, config, "classifier")
    configure_threads(threads)
    run_seed = classifier_seed(seed, fold)
    seed_everything(run_seed)
    # one process, or one of several under torchrun (rule gpu > 1): the batch size stays global
    ctx = init_distributed(cfg.device)
    device = ctx.device

    # data: the fold's real training patches (+ synthetic set), validation patches, leakage check
    split = pd.read_csv(splits, dtype=str, keep_default_na=False)
    index = attach_split(load_patch_index(tables, stores, statuses), split, fold)
    real = index[index["role"] == "train"].reset_index(drop=True)
    val = _select_val(index[index["role"] == "val"], cfg.val_max_patches_per_slide, run_seed)
    synth = load_synthetic(synthetic) if synthetic else None
    check_no_leakage(split, fold, real["slide_id"].unique(), val["slide_id"].unique(), synth)
    train_set = PatchImages(real, synth, cfg.img_size, cfg.augment)
    val_set = PatchImages(val, None, cfg.img_size)
    if cfg.preload:  # small inputs: decode and resize each patch once, not once per epoch
        train_set.preload("preload training patches")
        val_set.preload("preload validation patches")
    counts = np.bincount(train_set.labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"fold {fold}: the training set has no {CLASSES[int(np.argmin(counts))]} patches")
    n_synth = 0 if synth is None else len(synth)
    _log.info("fold %s arm %s: %d training patches (%d real from %d slides, %d synthetic; %s), %d validation "
              "patches from %d slides", fold, arm, len(train_set), len(real), real["slide_id"].nunique(), n_synth,
              ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts, strict=True)), len(val),
              val["slide_id"].nunique())
    if len(val) == 0:
        _log.warning("fold %s has no validation slides: the last epoch's weights are kept", fold)

    # model, optimizer, loss
    model = build_classifier(cfg.model, img_size=cfg.img_size, weights=cfg.weights, hub=cfg.hub,
                             model_kwargs=cfg.model_kwargs).to(device)
    model_ddp = wrap_model(model, ctx)  # training forward only; validation and saving use `model`
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    weight = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32) if cfg.balance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None,
                                  label_smoothing=cfg.label_smoothing)
    steps_per_epoch = len(epoch_batches(train_set.labels, cfg.batch_size, seed=run_seed, epoch=0,
                                        balance=cfg.balance == "sampler"))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    # resume
    run_config = {"config": dataclasses.asdict(cfg), "seed": run_seed, "fold": str(fold), "arm": arm,
                  "n_train": len(train_set), "n_val": len(val), "train_slides": sorted(real["slide_id"].unique())}
    ckpt = CheckpointManager(checkpoint_dir, run_config, keep=cfg.checkpoints_keep)
    step, history, best = 0, [], {"key": (-math.inf, -math.inf), "epoch": -1, "state": None}
    running = [0.0, 0]  # loss sum, batches of the current epoch
    state = ckpt.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, running = state["step"], state["history"], state["running"]
        best = {"key": tuple(state["best_key"]), "epoch": state["best_epoch"], "state": state["best_state"]}
        restore_rng_state(state["rng"])

    def save_checkpoint() -> None:
        if not ctx.is_main:
            return
        ckpt.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                         "running": running, "best_key": list(best["key"]), "best_epoch": best["epoch"],
                         "best_state": best["state"], "rng": rng_state()})

    from torch.utils.data import DataLoader

    model.train()
    bar = progress(total=total_steps, initial=step, desc=f"train {arm} fold {fold}", unit="step")
    started = time.monotonic()
    for epoch in range(step // steps_per_epoch, cfg.epochs):
        batches = epoch_batches(train_set.labels, cfg.batch_size, seed=run_seed, epoch=epoch,
                                balance=cfg.balance == "sampler")[step - epoch * steps_per_epoch:]
        loader = DataLoader(train_set, batch_sampler=shard_batches(batches, ctx), num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda")
        for x, y in loader:
            lr = cosine_value(step, total_steps, cfg.lr, cfg.min_lr, warmup_steps, warmup_start=0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, cfg.bf16):
                logits = model_ddp(x)
            loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fold {fold} arm {arm}: loss is {loss.item()} at step {step}; "
                                         "lower classifier.lr or check the input patches")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            running = [running[0] + float(all_reduce_mean(loss.detach().float())), running[1] + 1]
            bar.update(1)
            bar.set_postfix(loss=f"{running[0] / running[1]:.4f}", lr=f"{lr:.2e}")
            if step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                save_checkpoint()

        # end of epoch: validation on the fold's validation slides, model selection
        metrics = _validate(model, val, val_set, cfg, device)
        key = _selection_key(metrics, cfg.selection_metric)
        improved = key > best["key"] or best["state"] is None
        if improved or len(val) == 0:
            best = {"key": key, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append({"epoch": epoch, "step": step, "lr": lr, "train_loss": running[0] / max(running[1], 1),
                        **metrics, "selected": bool(improved or len(val) == 0),
                        "seconds": round(time.monotonic() - started, 2)})
        running = [0.0, 0]
        _log.info("epoch %d/%d: train loss %.4f, val slide AUC %.3f, val slide loss %.4f%s", epoch + 1, cfg.epochs,
                  history[-1]["train_loss"], metrics["val_slide_auc"], metrics["val_slide_loss"],
                  " (best so far)" if history[-1]["selected"] else "")
        save_checkpoint()
    bar.close()

    # final save: the selected weights, their metadata, the training curve
    best_row = next(r for r in history if r["epoch"] == best["epoch"])
    meta = {
        "model": cfg.model, "model_kwargs": dict(cfg.model_kwargs), "img_size": cfg.img_size, "classes": list(CLASSES),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "resize": "antialiased bilinear from the stored patch size to img_size",
        "arm": arm, "fold": str(fold), "seed": run_seed, "init_weights": cfg.weights, "hub": cfg.hub,
        "train_slides": sorted(real["slide_id"].unique()), "val_slides": sorted(val["slide_id"].unique()),
        "n_train_real": len(real), "n_train_synthetic": n_synth, "class_counts": dict(zip(CLASSES, counts.tolist(),
                                                                                       strict=True)),
        "selected_epoch": best["epoch"], "selection_metric": cfg.selection_metric,
        "selection": {k: best_row[k] for k in ("val_slide_auc", "val_slide_loss", "val_patch_loss")},
        "steps": step, "tiling": tiling, "config": dataclasses.asdict(cfg), "duvflow_version": code_version(),
    }
    if not ctx.is_main:  # every rank selected the same weights; rank 0 writes them
        return meta
    save_weights(best["state"], model_output, metadata={"arm": arm, "fold": str(fold), "model": cfg.model})
    write_json(meta, meta_output)
    write_csv(pd.DataFrame(history), metrics_output)
    ckpt.clear()
    _log.info("fold %s arm %s: kept epoch %d of %d (%s)", fold, arm, best["epoch"] + 1, cfg.epochs,
              ", ".join(f"{k} {v:.4g}" for k, v in meta["selection"].items()))
    return meta
