"""Training of the patch classifier for one fold and arm (``train_classifier``).

One readable loop in the diffusers-example order: seed -> data (real training patches of the fold
+ the arm's synthetic set; leakage check) -> model -> optimizer -> schedule -> resume -> epochs of
steps (autocast, clip, step, log, checkpoint every N) -> validation on the fold's validation
slides with a slide-level metric (model selection) -> final save of the selected weights.

Resumable through the training harness (:class:`duvflow.train.harness.TrainingRun`): numbered
checkpoints (model, optimizer, best weights so far, history, step) go to an undeclared sibling
folder; a rerun whose result-relevant settings are unchanged continues from the newest one.
Because every step's samples and every sample's augmentation are functions of ``(seed, step)``,
a resumed run trains exactly as an uninterrupted one.
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

from duvflow.classifier.config import ClassifierConfig
from duvflow.classifier.data import PatchImages, batch_keys, batch_order, check_no_leakage, load_synthetic
from duvflow.classifier.model import CLASSES, build_classifier, predict_probs, save_classifier
from duvflow.core.backbone import initial_weights
from duvflow.core.config import from_dict
from duvflow.core.metrics import roc_auc
from duvflow.core.patches import attach_split, load_patch_index
from duvflow.core.provenance import code_version
from duvflow.core.runtime import progress
from duvflow.core.splits import read_splits
from duvflow.train.distributed import all_reduce_mean, shard_batches
from duvflow.train.harness import TrainingRun
from duvflow.train.schedules import cosine_value

__all__ = ["build_optimizer", "classifier_seed", "set_lr", "train_classifier"]

_log = logging.getLogger(__name__)
HISTORY_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_patch_loss", "val_patch_accuracy", "val_slide_auc",
                   "val_slide_loss", "selected", "seconds")


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
    probs = predict_probs(model, images, batch_size=cfg.eval_batch_size, device=device, mixed_precision=cfg.mixed_precision,
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


def _fold_data(tables, stores, statuses, splits, fold: str, synthetic, cfg: ClassifierConfig, seed: int,
               fraction: float | None = None) -> dict:
    """The fold's real training patches (+ the arm's synthetic set, or its subset at ``fraction``) and
    validation patches, checked for leakage (no test slide, or synthetic patch made from one, may enter)."""
    split = read_splits(splits)
    index = attach_split(load_patch_index(tables, stores, statuses), split, fold)
    real = index[index["role"] == "train"].reset_index(drop=True)
    val = _select_val(index[index["role"] == "val"], cfg.val_max_patches_per_slide, seed)
    synth = load_synthetic(synthetic, fraction, real["label_int"].to_numpy()) if synthetic else None
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
    _log.info("fold %s: %d training patches (%d real from %d slides, %d synthetic; %s), %d validation "
              "patches from %d slides", fold, len(train_set), len(real), real["slide_id"].nunique(), n_synth,
              ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts, strict=True)), len(val),
              val["slide_id"].nunique())
    if len(val) == 0:
        _log.warning("fold %s has no validation slides: the last epoch's weights are kept", fold)
    return {"real": real, "val": val, "n_synth": n_synth, "train_set": train_set, "val_set": val_set,
            "counts": counts, "fraction": fraction}


class _Selection:
    """The epoch's running training loss and, at the end of every epoch, validation and model
    selection (the best weights so far)."""

    def __init__(self, cfg: ClassifierConfig, val: pd.DataFrame, val_set: PatchImages, run: TrainingRun):
        self.cfg, self.val, self.val_set, self.run = cfg, val, val_set, run
        self.key, self.epoch, self.state = (-math.inf, -math.inf), -1, None
        self.running = [0.0, 0]  # loss sum, batches of the current epoch
        self.started = time.monotonic()

    def extra(self) -> dict:
        """What a checkpoint must hold besides models and optimizer."""
        return {"running": self.running, "best_key": list(self.key), "best_epoch": self.epoch,
                "best_state": self.state}

    def restore(self, extra: dict) -> None:
        if extra:
            self.running, self.key = extra["running"], tuple(extra["best_key"])
            self.epoch, self.state = extra["best_epoch"], extra["best_state"]

    def add_loss(self, loss: float) -> float:
        """Add a step's loss; returns the epoch's mean so far."""
        self.running = [self.running[0] + loss, self.running[1] + 1]
        return self.running[0] / self.running[1]

    def end_epoch(self, model, epoch: int, step: int, lr: float) -> None:
        train_loss = self.running[0] / max(self.running[1], 1)
        self.running = [0.0, 0]
        metrics = _validate(model, self.val, self.val_set, self.cfg, self.run.device)
        key = _selection_key(metrics, self.cfg.selection_metric)
        selected = key > self.key or self.state is None or len(self.val) == 0
        if selected:
            self.key, self.epoch = key, epoch
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.run.log(epoch=epoch, step=step, lr=lr, train_loss=train_loss, **metrics, selected=bool(selected),
                     seconds=round(time.monotonic() - self.started, 2))
        _log.info("epoch %d/%d: train loss %.4f, val slide AUC %.3f, val slide loss %.4f%s", epoch + 1, self.cfg.epochs,
                  train_loss, metrics["val_slide_auc"], metrics["val_slide_loss"], " (best so far)" if selected else "")


def train_classifier(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str],
                     splits: str | os.PathLike, fold: str, arm: str, model_output: str | os.PathLike,
                     meta_output: str | os.PathLike, metrics_output: str | os.PathLike,
                     checkpoint_dir: str | os.PathLike, classifier: dict, seed: int,
                     synthetic: str | os.PathLike | None = None, tiling: dict | None = None,
                     threads: int | None = None, teacher: str | os.PathLike | None = None,
                     synthetic_fraction: float | None = None) -> dict:
    """Train the classifier of ``arm`` on ``fold``; write weights, metadata JSON and metrics CSV.

    ``synthetic`` is the arm's synthetic set (folder with ``manifest.parquet``; None for ``real``);
    ``synthetic_fraction`` (an arm of a fraction sweep) takes its nested subset at that share.
    ``teacher`` is the fold's DINO teacher (``teacher.safetensors``), the start when ``init`` is dino.
    ``tiling`` (the tiling config) is stored in the metadata so new slides can be tiled alike.
    """
    cfg = from_dict(ClassifierConfig, classifier, "classifier")
    run_seed = classifier_seed(seed, fold)
    data = _fold_data(tables, stores, statuses, splits, fold, synthetic, cfg, run_seed, synthetic_fraction)
    train_set, counts, train_slides = data["train_set"], data["counts"], sorted(data["real"]["slide_id"].unique())
    run = TrainingRun("classifier", cfg, checkpoint_dir=checkpoint_dir, seed=run_seed, threads=threads,
                      metric_columns=HISTORY_COLUMNS,
                      identity={"seed": run_seed, "fold": str(fold), "arm": arm, "n_train": len(train_set),
                                "n_val": len(data["val"]), "train_slides": train_slides})
    device = run.device
    model = build_classifier(cfg.model, img_size=cfg.img_size, **initial_weights(cfg.init, cfg.weights, teacher),
                             model_kwargs=cfg.model_kwargs).to(device)
    model_ddp = run.wrap(model)  # training forward only; validation and saving use `model`
    optimizer = build_optimizer(model, cfg)
    weight = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32) if cfg.balance == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None,
                                  label_smoothing=cfg.label_smoothing)
    order = batch_order(train_set.labels, cfg.batch_size, seed=run_seed, balance=cfg.balance == "sampler")
    spe = order.per_epoch
    total, warmup = cfg.epochs * spe, round(cfg.warmup_epochs * spe)
    selection = _Selection(cfg, data["val"], data["val_set"], run)
    run.track(model=model, optimizer=optimizer)
    extra = run.resume()
    selection.restore(extra)

    loader = run.loader(train_set, shard_batches(order.sampler(run.start, total, key=lambda st, _: batch_keys(order, st)),
                                                 run.ctx), num_workers=cfg.num_workers, seed=run_seed)
    model.train()
    bar = progress(total=total, initial=run.start, desc=f"train {arm} fold {fold}", unit="step")
    for step, (x, y) in run.steps(total, loader, extra=selection.extra,
                                  checkpoint_when=lambda done: done % spe == 0 and done < total):
        lr = cosine_value(step, total, cfg.lr, cfg.min_lr, warmup, warmup_start=0.0)
        loss = _train_step(model, model_ddp, optimizer, loss_fn, x, y, lr, cfg, run)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fold {fold} arm {arm}: loss is {loss.item()} at step {step}; "
                                     "lower classifier.lr or check the input patches")
        mean_loss = selection.add_loss(float(all_reduce_mean(loss.float())))
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        if (step + 1) % spe == 0:  # end of epoch: validation on the fold's validation slides, selection
            selection.end_epoch(model, step // spe, step + 1, lr)
    bar.close()
    return _finish(run, cfg, model, selection, data, arm=arm, fold=fold, seed=run_seed, tiling=tiling, total=total,
                   model_output=model_output, meta_output=meta_output, metrics_output=metrics_output)


def build_optimizer(model, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    """AdamW over the classifier's timm backbone (the wrapper holds only buffers), so timm's rules
    apply: no weight decay on biases, norms and embeddings (its ``no_weight_decay``), and with
    ``layer_decay`` one parameter group per layer whose ``lr_scale`` decays from the head down."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model.backbone, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the step's learning rate: ``lr`` times each group's layer-wise ``lr_scale`` (1 without)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _train_step(model, model_ddp, optimizer, loss_fn, x, y, lr: float, cfg: ClassifierConfig,
                run: TrainingRun) -> torch.Tensor:
    """One optimisation step at learning rate ``lr``; returns the detached loss."""
    set_lr(optimizer, lr)
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    with run.autocast():
        logits = model_ddp(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


def _finish(run: TrainingRun, cfg: ClassifierConfig, model, selection: _Selection, data: dict, *, arm, fold, seed,
            tiling, total, model_output, meta_output, metrics_output) -> dict:
    """Final save (rank 0): the selected weights, their metadata, the training curve."""
    real, val, counts = data["real"], data["val"], data["counts"]
    best_row = next(r for r in run.rows if r["epoch"] == selection.epoch)
    meta = {
        "model": cfg.model, "model_kwargs": dict(cfg.model_kwargs), "img_size": cfg.img_size, "classes": list(CLASSES),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "resize": "antialiased bilinear from the stored patch size to img_size",
        "arm": arm, "fold": str(fold), "seed": seed, "init_weights": cfg.weights, "init": cfg.init,
        "train_slides": sorted(real["slide_id"].unique()), "val_slides": sorted(val["slide_id"].unique()),
        "n_train_real": len(real), "n_train_synthetic": data["n_synth"], "synthetic_fraction": data["fraction"],
        "class_counts": dict(zip(CLASSES, counts.tolist(), strict=True)),
        "selected_epoch": selection.epoch, "selection_metric": cfg.selection_metric,
        "selection": {k: best_row[k] for k in ("val_slide_auc", "val_slide_loss", "val_patch_loss")},
        "steps": total, "tiling": tiling,
        "config": dataclasses.asdict(cfg), "duvflow_version": code_version(),
    }
    if not run.is_main:  # every rank selected the same weights; rank 0 writes them
        return meta
    save_classifier(selection.state, model_output, meta_output, meta)
    run.write_metrics(metrics_output)
    run.finish()
    _log.info("fold %s arm %s: kept epoch %d of %d (%s)", fold, arm, selection.epoch + 1, cfg.epochs,
              ", ".join(f"{k} {v:.4g}" for k, v in meta["selection"].items()))
    return meta
