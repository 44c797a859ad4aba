"""DINO self-distillation fine-tuning of a timm ViT on one fold's training slides.

One readable loop in the diffusers-example order: config -> seed -> models (student, EMA teacher)
-> loss -> optimizer -> data -> schedules -> resume -> step loop (augment, forward, loss, clip,
step, EMA, centre, metrics, checkpoint every N) -> final save of the teacher backbone.

Only the fold's ``train`` slides are read; ``val`` and ``test`` slides never reach the model.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duvflow.core.backbone import initial_weights
from duvflow.core.config import from_dict
from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, write_csv, write_json
from duvflow.core.patches import PatchDataset, attach_split, load_patch_index
from duvflow.core.provenance import code_version
from duvflow.core.runtime import progress
from duvflow.core.splits import fold_seed
from duvflow.ssl.augment import MultiCropAugment
from duvflow.ssl.batches import as_uint8_tensor, collate_patches, to_device_float
from duvflow.ssl.config import DinoConfig
from duvflow.ssl.head import DINOHead, MultiCropModel
from duvflow.ssl.loss import DINOLoss
from duvflow.ssl.model import Embedder, backbone_kwargs, build_backbone, data_stats, fingerprint
from duvflow.train.batches import StepBatches, step_seed
from duvflow.train.checkpoint import save_weights
from duvflow.train.distributed import all_reduce_mean, shard_batches
from duvflow.train.harness import TrainingRun
from duvflow.train.schedules import cosine_schedule, warmup_constant_schedule

__all__ = ["METRIC_COLUMNS", "CollapseMonitor", "plot_metrics", "train_dino"]

_log = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "epoch", "loss", "teacher_entropy", "kl", "embed_std", "grad_norm", "lr",
                  "weight_decay", "momentum", "teacher_temp", "step_time_s")


class _StepPatches(torch.utils.data.Dataset):
    """``dataset[(step, row)]`` -> (uint8 patch, label, row, step)."""

    def __init__(self, dataset: PatchDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        step, row = key
        return (*self.dataset[row], step)


class DinoCollate:
    """Batch collation; with ``augment`` it also makes the multi-crop views (in the DataLoader
    workers, overlapping with the training step on CPU-only machines)."""

    def __init__(self, augment: MultiCropAugment | None, seed: int):
        self.augment, self.seed = augment, seed

    def __call__(self, items):
        step = items[0][3]
        batch, sizes, _, _ = collate_patches([it[:3] for it in items])
        if self.augment is None:
            return step, batch, sizes, None
        gen = torch.Generator().manual_seed(step_seed(self.seed, step))
        with torch.no_grad():
            views = self.augment(batch.permute(0, 3, 1, 2).float().div_(255.0), gen, sizes)
        return step, None, None, views


class CollapseMonitor:
    """Warns (once per kind) when DINO collapses, judged on smoothed per-step diagnostics:

    * embeddings: the std over the batch of L2-normalised teacher features, times sqrt(dim)
      (about 1 for well-spread features, 0 when every patch maps to one vector), below ``min_std``;
    * one prototype dominates: teacher entropy below 2% of its maximum log(out_dim);
    * uniform teacher: entropy above 98% of the maximum while KL(teacher || student) ~ 0 (and a
      milder warning when the teacher's entropy stays above 99% of the maximum at all).
    """

    def __init__(self, out_dim: int, min_std: float, start_step: int, smoothing: float = 0.9):
        self.max_entropy = math.log(out_dim)
        self.min_std, self.start_step, self.smoothing = min_std, start_step, smoothing
        self.state: dict[str, float] = {}
        self.warned: list[str] = []

    def update(self, step: int, embed_std: float, entropy: float, kl: float) -> None:
        for key, value in (("std", embed_std), ("entropy", entropy), ("kl", kl)):
            prev = self.state.get(key)
            self.state[key] = value if prev is None else self.smoothing * prev + (1 - self.smoothing) * value
        if step < self.start_step:
            return
        s = self.state
        if s["std"] < self.min_std:
            self._warn("embeddings", step, f"teacher embeddings collapsed: normalised std {s['std']:.4f} < "
                       f"{self.min_std} (every patch maps to nearly the same vector)")
        if s["entropy"] < 0.02 * self.max_entropy:
            self._warn("dominant", step, f"teacher outputs collapsed onto one prototype: entropy {s['entropy']:.4f} "
                       f"nats of max {self.max_entropy:.2f}")
        if s["entropy"] > 0.98 * self.max_entropy and s["kl"] < 1e-3:
            self._warn("uniform", step, f"teacher outputs collapsed to uniform: entropy {s['entropy']:.3f} nats "
                       f"(max {self.max_entropy:.2f}), KL teacher-student {s['kl']:.2e}")
        elif s["entropy"] > 0.99 * self.max_entropy:
            self._warn("near-uniform", step, f"teacher outputs are nearly uniform (entropy {s['entropy']:.3f} of max "
                       f"{self.max_entropy:.3f} nats): the teacher gives the student almost no signal, typical of a "
                       f"randomly initialised backbone on few patches; set dino.weights to a pretrained backbone, "
                       f"lower dino.teacher_temp or train longer")

    def _warn(self, kind: str, step: int, message: str) -> None:
        if kind not in self.warned:
            self.warned.append(kind)
            _log.warning("DINO COLLAPSE SUSPECTED at step %d: %s. Check lr, teacher temperature and centring "
                         "momentum; the embeddings of this run may be useless.", step, message)


def _param_groups(model: torch.nn.Module) -> list[dict]:
    """Weights get weight decay; biases and norm parameters (1-d) do not (as in DINO)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)


def _training_patches(tables, stores, statuses, splits, fold: str, batch_size: int) -> pd.DataFrame:
    """The fold's training patches in a fixed order (slide, patch); at least one batch of them."""
    index = attach_split(load_patch_index(tables, stores, statuses), splits, fold)
    train = index[index["role"] == "train"].sort_values(["slide_id", "patch_index"]).reset_index(drop=True)
    if len(train) < batch_size:
        raise ValueError(f"fold {fold} has {len(train)} training patches, fewer than dino.batch_size="
                         f"{batch_size}; lower the batch size")
    return train


def _schedules(cfg: DinoConfig, steps_per_epoch: int, total: int) -> dict:
    """Per-step learning rate, weight decay, teacher momentum and temperature; warm-up lengths."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return {
        "lr": cosine_schedule(cfg.lr * cfg.batch_size / 256.0, cfg.min_lr, total, warmup),
        "weight_decay": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total),
        "momentum": cosine_schedule(cfg.momentum_teacher, 1.0, total),
        "teacher_temp": warmup_constant_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, total,
                                                 round(cfg.warmup_teacher_temp_epochs * steps_per_epoch)),
        "warmup": warmup, "freeze_last": round(cfg.freeze_last_layer_epochs * steps_per_epoch),
    }


def _build_models(cfg: DinoConfig, seed: int, device) -> tuple[MultiCropModel, MultiCropModel, list, list]:
    """Student and teacher from the same backbone; the teacher is never back-propagated."""
    backbone = build_backbone(cfg.backbone, model_kwargs=cfg.model_kwargs, pooling=cfg.pooling,
                              img_size=cfg.img_size, **initial_weights(cfg.init, cfg.weights), seed=seed,
                              drop_path_rate=cfg.drop_path_rate)
    mean, std = data_stats(backbone)
    head = cfg.head
    student = MultiCropModel(backbone, DINOHead(backbone.num_features, head.out_dim, head.hidden_dim,
                                                head.bottleneck_dim, head.n_layers, head.norm_last_layer),
                             mean, std).to(device)
    teacher = copy.deepcopy(student)
    for module in teacher.modules():  # no stochastic depth in the teacher
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    teacher.requires_grad_(False).eval()
    student.train()
    return student, teacher, mean, std


def _loader_workers(threads: int, num_workers: int | None, device) -> int:
    workers = max(0, min(threads - 1, 8)) if num_workers is None else num_workers
    if device.type == "cpu" and workers:
        # the job's threads are shared: loader workers + compute threads must not oversubscribe the
        # cores (a torch thread pool waiting on a descheduled thread stalls every op)
        torch.set_num_threads(max(1, threads - workers))
    return workers


def _loader(run: TrainingRun, train: pd.DataFrame, cfg: DinoConfig, workers: int, total: int, seed: int,
            aug_seed: int, augment: MultiCropAugment) -> torch.utils.data.DataLoader:
    """The batches of steps ``run.start .. total - 1`` as ``(step, uint8 batch, sizes, views)``; the
    views are made in the workers (CPU), else ``None`` and made batched on the device (GPU)."""
    # on a GPU the batched augmentation is cheap on the device; on a CPU the workers do it in parallel
    in_workers = workers > 0 and (cfg.augment_on == "workers" or
                                  (cfg.augment_on == "auto" and run.device.type != "cuda"))
    _log.info("augmentation runs %s", f"in {workers} DataLoader workers" if in_workers else f"batched on {run.device}")
    order = StepBatches(len(train), cfg.batch_size, seed)
    sampler = order.sampler(run.start, total, key=lambda step, rows: [(step, r) for r in rows])
    return run.loader(_StepPatches(PatchDataset(train, transform=as_uint8_tensor)), shard_batches(sampler, run.ctx),
                      num_workers=workers, seed=seed, collate_fn=DinoCollate(augment if in_workers else None, aug_seed),
                      persistent_workers=False, prefetch_factor=4 if workers else None)


class _PendingMetrics:
    """Per-step diagnostics kept on the device and moved to the host in batches of steps (one sync
    per flush, not per step), then logged as named metric rows and fed to the collapse monitor."""

    def __init__(self, run: TrainingRun, monitor: CollapseMonitor, sched: dict, steps_per_epoch: int, fold: str,
                 bar):
        self.run, self.monitor, self.sched, self.spe, self.fold, self.bar = run, monitor, sched, steps_per_epoch, fold, bar
        self.pending: list[tuple[int, torch.Tensor, float]] = []

    def add(self, step: int, values: torch.Tensor, seconds: float) -> None:
        self.pending.append((step, values, seconds))

    def flush(self) -> dict:
        """Log what is pending; returns the (empty) extra checkpoint state of DINO."""
        if not self.pending:
            return {}
        values = torch.stack([v for _, v, _ in self.pending]).float().cpu().tolist()
        sched = self.sched
        for (st, _, dt), (loss_v, ent, kl, estd, gnorm) in zip(self.pending, values, strict=True):
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"DINO loss is {loss_v} at step {st} (fold {self.fold}); lower dino.lr or "
                                         f"raise dino.warmup_epochs")
            self.run.log(step=st, epoch=st // self.spe, loss=loss_v, teacher_entropy=ent, kl=kl, embed_std=estd,
                         grad_norm=gnorm, lr=sched["lr"][st], weight_decay=sched["weight_decay"][st],
                         momentum=sched["momentum"][st], teacher_temp=sched["teacher_temp"][st], step_time_s=dt)
            self.monitor.update(st, estd, ent, kl)
        self.pending.clear()
        self.bar.set_postfix(loss=f"{self.run.rows[-1]['loss']:.4f}")
        return {}


def _dino_step(step: int, views, student, student_ddp, teacher, dino_loss, optimizer, sched: dict, cfg: DinoConfig,
               run: TrainingRun) -> torch.Tensor:
    """One DINO step on the multi-crop ``views``; returns the detached diagnostics (loss, teacher
    entropy, KL, embedding std, gradient norm), averaged over ranks."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(sched["lr"][step])
        if i == 0:
            group["weight_decay"] = float(sched["weight_decay"][step])
    with run.autocast():
        with torch.no_grad():
            t_feats, t_out = teacher(views[:2])
        _, s_out = student_ddp(views)
    loss, stats = dino_loss(s_out, t_out, float(sched["teacher_temp"][step]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                               else float("inf"))
    if step < sched["freeze_last"]:  # DINO: the prototypes stay fixed at first, which stabilises training
        for p in student.head.last_layer.parameters():
            p.grad = None
    optimizer.step()
    ema_update(teacher, student, float(sched["momentum"][step]))
    with torch.no_grad():
        z = torch.nn.functional.normalize(t_feats.float(), dim=-1)
        embed_std = z.std(dim=0).mean() * math.sqrt(z.shape[1])
        return all_reduce_mean(torch.stack([loss.detach(), stats.teacher_entropy, stats.kl, embed_std,
                                            grad_norm.float()]))


def train_dino(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None, splits: str,
               fold: str, teacher: str | os.PathLike, teacher_config: str | os.PathLike,
               metrics: str | os.PathLike, dino: dict, seed: int, checkpoint_dir: str | os.PathLike,
               plot: str | os.PathLike | None = None, threads: int = 1, num_workers: int | None = None,
               stop_after: int | None = None) -> dict | None:
    """Fine-tune with DINO on fold ``fold``'s training slides; write the teacher backbone + metrics.

    ``stop_after`` ends the run once that many steps are done, without final outputs, as a kill
    would; the next call resumes from the newest checkpoint in ``checkpoint_dir``.
    Returns the teacher's JSON config (None when stopped early).
    """
    cfg = from_dict(DinoConfig, dino, "dino")
    run_seed = fold_seed(seed, fold)
    train = _training_patches(tables, stores, statuses, splits, fold, cfg.batch_size)
    train_slides = sorted(train["slide_id"].unique())
    steps_per_epoch = len(train) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    run = TrainingRun("dino", cfg, checkpoint_dir=checkpoint_dir, seed=run_seed, threads=threads,
                      metric_columns=METRIC_COLUMNS,
                      identity={"seed": seed, "fold": str(fold), "train_slides": train_slides, "n_train": len(train)})
    device = run.device
    _log.info("DINO fold %s: %d training patches from %d slides (%s), %d steps (%d epochs x %d), device %s",
              fold, len(train), len(train_slides), ", ".join(train_slides), total, cfg.epochs, steps_per_epoch,
              device)
    student, teacher_model, mean, std = _build_models(cfg, seed, device)
    student_ddp = run.wrap(student)  # forward only; EMA, saving use `student`
    dino_loss = DINOLoss(cfg.head.out_dim, n_global=2, student_temp=cfg.student_temp,
                         center_momentum=cfg.center_momentum).to(device)
    optimizer = torch.optim.AdamW(_param_groups(student), lr=0.0, weight_decay=cfg.weight_decay)
    augment = MultiCropAugment(cfg.img_size, cfg.crops, cfg.augment)
    sched = _schedules(cfg, steps_per_epoch, total)
    run.track(student=student, teacher=teacher_model, loss=dino_loss, optimizer=optimizer)
    run.resume()

    aug_seed = run_seed + 104_729 * run.ctx.rank  # each rank augments its own shard with its own stream
    loader = _loader(run, train, cfg, _loader_workers(threads, num_workers, device), total, run_seed, aug_seed,
                     augment)
    monitor = CollapseMonitor(cfg.head.out_dim, cfg.collapse_std,
                              start_step=max(sched["warmup"], sched["freeze_last"], total // 4))
    for r in run.rows:
        monitor.update(int(r["step"]), r["embed_std"], r["teacher_entropy"], r["kl"])
    log_every = max(1, total // 20)
    flush_every = min(log_every, 50)
    bar = progress(total=total, initial=run.start, desc=f"DINO fold {fold}", unit="step")
    pending = _PendingMetrics(run, monitor, sched, steps_per_epoch, fold, bar)
    last_time = time.perf_counter()
    for step, (batch_step, batch, sizes, views) in run.steps(total, loader, extra=pending.flush, stop_after=stop_after):
        assert batch_step == step, f"data loader out of step ({batch_step} != {step})"
        if views is None:
            gen = torch.Generator(device=device).manual_seed(step_seed(aug_seed, step))
            with torch.no_grad():
                views = augment(to_device_float(batch, device), gen, sizes.to(device))
        else:
            views = [v.to(device, non_blocking=True) for v in views]
        values = _dino_step(step, views, student, student_ddp, teacher_model, dino_loss, optimizer, sched, cfg, run)
        pending.add(step, values, time.perf_counter() - last_time)  # wall time per step, loading included
        last_time = time.perf_counter()
        bar.update(1)
        done = step + 1
        if done % flush_every == 0 or done % cfg.checkpoint_every == 0 or done == total or done == stop_after:
            pending.flush()
        if done % log_every == 0 or done == total:
            r = run.rows[-1]
            _log.info("step %d/%d epoch %d: loss %.4f, teacher entropy %.3f, KL %.4f, embed std %.3f, lr %.2e, "
                      "momentum %.5f", done, total, r["epoch"], r["loss"], r["teacher_entropy"], r["kl"],
                      r["embed_std"], r["lr"], r["momentum"])
    bar.close()
    if not run.completed:
        return None
    return _finish(run, cfg, teacher_model, student.backbone, mean, std, monitor, teacher=teacher,
                   teacher_config=teacher_config, metrics=metrics, plot=plot, fold=fold, seed=seed, total=total,
                   train_slides=train_slides, n_train=len(train))


def _finish(run: TrainingRun, cfg: DinoConfig, teacher_model, student_backbone, mean, std, monitor, *, teacher,
            teacher_config, metrics, plot, fold, seed, total, train_slides, n_train) -> dict:
    """Final save: the teacher backbone (the embedder), its config, the metrics (rank 0 writes)."""
    table = run.metrics()
    table[["step", "epoch"]] = table[["step", "epoch"]].astype(int)
    meta = {
        "backbone": cfg.backbone, "model_kwargs": backbone_kwargs(cfg.model_kwargs, cfg.pooling),
        "img_size": cfg.img_size, "pooling": cfg.pooling, "embed_dim": int(student_backbone.num_features),
        "mean": mean, "std": std, "fold": str(fold), "seed": seed, "steps": total, "epochs": cfg.epochs,
        "initial_weights": cfg.weights, "train_slides": train_slides, "n_train_patches": n_train,
        "final_metrics": {k: float(v) for k, v in table.iloc[-1].items()} if len(table) else {},
        "collapse_warnings": monitor.warned, "duvflow_version": code_version(),
        "fingerprint": fingerprint(Embedder(teacher_model.backbone, mean, std, cfg.img_size)),
    }
    if monitor.warned:
        _log.warning("DINO fold %s finished with collapse warnings: %s", fold, ", ".join(monitor.warned))
    if not run.is_main:  # every rank holds the same teacher; rank 0 writes it
        return meta
    save_weights(teacher_model.backbone.state_dict(), teacher, metadata={"fold": str(fold), "backbone": cfg.backbone})
    write_json(meta, teacher_config)
    write_csv(table, metrics)
    if plot is not None:
        plot_metrics(table, plot, title=f"DINO fold {fold}")
    run.finish()
    _log.info("wrote teacher %s (loss %.4f -> %.4f)", teacher, table["loss"].iloc[0], table["loss"].iloc[-1])
    return meta


def plot_metrics(table: pd.DataFrame, target: str | os.PathLike, title: str = "DINO") -> None:
    """Training curves: loss, collapse diagnostics and schedules against the step."""
    plt = pyplot()

    panels = [("loss", "loss"), ("teacher_entropy", "teacher entropy (nats)"), ("kl", "KL teacher-student"),
              ("embed_std", "embedding std x sqrt(dim)"), ("lr", "learning rate"), ("momentum", "teacher momentum")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), constrained_layout=True)
    for ax, (col, label) in zip(axes.flat, panels, strict=True):
        y = table[col].to_numpy()
        ax.plot(table["step"], y, lw=0.8, alpha=0.5 if len(y) > 50 else 1.0)
        if len(y) > 50:  # a moving average makes the trend readable on noisy per-step values
            k = max(5, len(y) // 50)
            ax.plot(table["step"].to_numpy()[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.5)
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.suptitle(title)
    with atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
