"""DINO self-distillation fine-tuning of a timm ViT on one fold's training slides.

One readable loop in the diffusers-example order: config -> seed -> models (student, EMA teacher)
-> loss -> optimizer -> data -> schedules -> resume -> step loop (augment, forward, loss, clip,
step, EMA, centre, metrics, checkpoint every N) -> final save of the teacher backbone.

Only the fold's ``train`` slides are read; ``val`` and ``test`` slides never reach the model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duvflow.core.config import from_dict
from duvflow.core.figures import pyplot
from duvflow.core.io import atomic_path, write_csv, write_json
from duvflow.core.patches import PatchDataset, attach_split, load_patch_index
from duvflow.core.provenance import code_version
from duvflow.core.runtime import autocast, configure_threads, progress, seed_everything
from duvflow.core.splits import fold_seed
from duvflow.ssl.augment import AugmentConfig, CropConfig, MultiCropAugment
from duvflow.ssl.batches import EpochBatchSampler, as_uint8_tensor, collate_patches, to_device_float
from duvflow.ssl.head import DINOHead, MultiCropModel
from duvflow.ssl.loss import DINOLoss
from duvflow.ssl.model import Embedder, backbone_kwargs, build_backbone, data_stats, fingerprint
from duvflow.ssl.schedules import cosine_schedule, warmup_constant_schedule
from duvflow.train.checkpoint import CheckpointManager, restore_rng_state, rng_state, save_weights
from duvflow.train.distributed import all_reduce_mean, init_distributed, shard_batches, wrap_model

__all__ = ["METRIC_COLUMNS", "CollapseMonitor", "DinoConfig", "HeadConfig", "plot_metrics", "train_dino"]

_log = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "epoch", "loss", "teacher_entropy", "kl", "embed_std", "grad_norm", "lr",
                  "weight_decay", "momentum", "teacher_temp", "step_time_s")
# settings that change how a run executes but not what it computes: a resumed run may differ in them
_RUNTIME_KEYS = ("device", "augment_on", "checkpoint_every", "checkpoints_keep")


@dataclass(frozen=True)
class HeadConfig:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    norm_last_layer: bool = True


@dataclass(frozen=True)
class DinoConfig:
    backbone: str = "vit_small_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    hub: bool = False
    img_size: int = 224
    pooling: str = "cls"
    drop_path_rate: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 3
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1
    collapse_std: float = 0.05
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    device: str = "auto"
    augment_on: str = "auto"
    bf16: bool = True


def augment_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s augmentation: reproducible wherever it runs and after a resume."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


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
        gen = torch.Generator().manual_seed(augment_seed(self.seed, step))
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


def train_dino(*, tables: Sequence[str], stores: Sequence[str], statuses: Sequence[str] | None, splits: str,
               fold: str, teacher: str | os.PathLike, teacher_config: str | os.PathLike,
               metrics: str | os.PathLike, dino: dict, seed: int, checkpoint_dir: str | os.PathLike,
               plot: str | os.PathLike | None = None, threads: int = 1, num_workers: int | None = None,
               stop_after: int | None = None) -> dict | None:
    """Fine-tune with DINO on fold ``fold``'s training slides; write the teacher backbone + metrics.

    ``stop_after`` ends the run (after checkpointing) once that many steps are done, without final
    outputs, as a time-out would; the next call resumes from ``checkpoint_dir``.
    Returns the teacher's JSON config (None when stopped early).
    """
    cfg = from_dict(DinoConfig, dino, "dino")
    configure_threads(threads)
    # one process, or one of several under torchrun (rule gpu > 1): the batch size stays global
    ctx = init_distributed(cfg.device)
    device = ctx.device
    run_seed = fold_seed(seed, fold)

    # data: the fold's training slides only
    index = attach_split(load_patch_index(tables, stores, statuses), splits, fold)
    train = index[index["role"] == "train"].sort_values(["slide_id", "patch_index"]).reset_index(drop=True)
    train_slides = sorted(train["slide_id"].unique())
    if len(train) < cfg.batch_size:
        raise ValueError(f"fold {fold} has {len(train)} training patches, fewer than dino.batch_size="
                         f"{cfg.batch_size}; lower the batch size")
    steps_per_epoch = len(train) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    _log.info("DINO fold %s: %d training patches from %d slides (%s), %d steps (%d epochs x %d), device %s",
              fold, len(train), len(train_slides), ", ".join(train_slides), total, cfg.epochs, steps_per_epoch,
              device)

    # models: student and teacher start from the same backbone; the teacher is never back-propagated
    student_bb = build_backbone(cfg.backbone, model_kwargs=cfg.model_kwargs, pooling=cfg.pooling,
                                img_size=cfg.img_size, weights=cfg.weights, hub=cfg.hub, seed=seed,
                                drop_path_rate=cfg.drop_path_rate)
    mean, std = data_stats(student_bb)
    seed_everything(run_seed)
    head = cfg.head
    student = MultiCropModel(student_bb, DINOHead(student_bb.num_features, head.out_dim, head.hidden_dim,
                                                  head.bottleneck_dim, head.n_layers, head.norm_last_layer),
                             mean, std).to(device)
    teacher_model = copy.deepcopy(student)
    student_ddp = wrap_model(student, ctx)  # forward only; EMA, saving use `student`
    for module in teacher_model.modules():  # no stochastic depth in the teacher
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    teacher_model.requires_grad_(False).eval()
    student.train()
    dino_loss = DINOLoss(head.out_dim, n_global=2, student_temp=cfg.student_temp,
                         center_momentum=cfg.center_momentum).to(device)
    optimizer = torch.optim.AdamW(_param_groups(student), lr=0.0, weight_decay=cfg.weight_decay)
    augment = MultiCropAugment(cfg.img_size, cfg.crops, cfg.augment)

    # schedules, per step
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    lr_sched = cosine_schedule(cfg.lr * cfg.batch_size / 256.0, cfg.min_lr, total, warmup)
    wd_sched = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total)
    mom_sched = cosine_schedule(cfg.momentum_teacher, 1.0, total)
    temp_sched = warmup_constant_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, total,
                                          round(cfg.warmup_teacher_temp_epochs * steps_per_epoch))
    freeze_last = round(cfg.freeze_last_layer_epochs * steps_per_epoch)

    # resume
    run_config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME_KEYS}
    run_config.update(seed=seed, fold=str(fold), train_slides=train_slides, n_train=len(train))
    ckpt = CheckpointManager(checkpoint_dir, run_config, keep=cfg.checkpoints_keep)
    rows: list[list[float]] = []
    start = 0
    state = ckpt.load_latest()
    if state is not None:
        student.load_state_dict(state["student"])
        teacher_model.load_state_dict(state["teacher"])
        dino_loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        # rows of a checkpoint written before a metric column existed are padded with NaN
        rows = [r + [math.nan] * (len(METRIC_COLUMNS) - len(r)) for r in state["metrics"].tolist()]
        start = int(state["step"])

    workers = max(0, min(threads - 1, 8)) if num_workers is None else num_workers
    if device.type == "cpu" and workers:
        # the job's threads are shared: loader workers + compute threads must not oversubscribe the
        # cores (a torch thread pool waiting on a descheduled thread stalls every op)
        torch.set_num_threads(max(1, threads - workers))
    if cfg.augment_on not in ("auto", "device", "workers"):
        raise ValueError(f"dino.augment_on must be auto, device or workers, got {cfg.augment_on!r}")
    # on a GPU the batched augmentation is cheap on the device; on a CPU the workers do it in parallel
    in_workers = workers > 0 and (cfg.augment_on == "workers" or (cfg.augment_on == "auto" and device.type != "cuda"))
    # each rank augments its own shard: its own random stream (rank 0 = the single-process stream)
    aug_seed = run_seed + 104_729 * ctx.rank
    loader = torch.utils.data.DataLoader(
        _StepPatches(PatchDataset(train, transform=as_uint8_tensor)),
        batch_sampler=shard_batches(EpochBatchSampler(len(train), cfg.batch_size, steps_per_epoch, total, run_seed,
                                                      start), ctx),
        num_workers=workers, collate_fn=DinoCollate(augment if in_workers else None, aug_seed),
        pin_memory=device.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(run_seed),
    )
    _log.info("augmentation runs %s", f"in {workers} DataLoader workers" if in_workers else f"batched on {device}")
    monitor = CollapseMonitor(head.out_dim, cfg.collapse_std, start_step=max(warmup, freeze_last, total // 4))
    for r in rows:
        monitor.update(int(r[0]), r[5], r[3], r[4])
    log_every = max(1, total // 20)
    flush_every = min(log_every, 50)
    pending: list[tuple[int, torch.Tensor, float]] = []

    def flush() -> None:
        """Move the pending per-step diagnostics to the host (one sync per batch of steps, not per step)."""
        if not pending:
            return
        values = torch.stack([v for _, v, _ in pending]).float().cpu().tolist()
        for (st, _, dt), (loss_v, ent, kl, estd, gnorm) in zip(pending, values, strict=True):
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"DINO loss is {loss_v} at step {st} (fold {fold}); lower dino.lr or "
                                         f"raise dino.warmup_epochs")
            rows.append([st, st // steps_per_epoch, loss_v, ent, kl, estd, gnorm, lr_sched[st], wd_sched[st],
                         mom_sched[st], temp_sched[st], dt])
            monitor.update(st, estd, ent, kl)
        pending.clear()
        bar.set_postfix(loss=f"{rows[-1][2]:.4f}")

    bar = progress(total=total, initial=start, desc=f"DINO fold {fold}", unit="step")
    stopped = False
    last_time = time.perf_counter()
    for step, (batch_step, batch, sizes, views) in zip(range(start, total), loader, strict=True):
        assert batch_step == step, f"data loader out of step ({batch_step} != {step})"
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(lr_sched[step])
            if i == 0:
                group["weight_decay"] = float(wd_sched[step])
        if views is None:
            gen = torch.Generator(device=device).manual_seed(augment_seed(aug_seed, step))
            with torch.no_grad():
                views = augment(to_device_float(batch, device), gen, sizes.to(device))
        else:
            views = [v.to(device, non_blocking=True) for v in views]
        with autocast(device, enabled=cfg.bf16):
            with torch.no_grad():
                t_feats, t_out = teacher_model(views[:2])
            _, s_out = student_ddp(views)
        loss, stats = dino_loss(s_out, t_out, float(temp_sched[step]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad if cfg.clip_grad > 0
                                                   else float("inf"))
        if step < freeze_last:  # DINO: the prototypes stay fixed at first, which stabilises training
            for p in student.head.last_layer.parameters():
                p.grad = None
        optimizer.step()
        ema_update(teacher_model, student, float(mom_sched[step]))

        with torch.no_grad():
            z = torch.nn.functional.normalize(t_feats.float(), dim=-1)
            embed_std = z.std(dim=0).mean() * math.sqrt(z.shape[1])
            pending.append((step, all_reduce_mean(torch.stack([loss.detach(), stats.teacher_entropy, stats.kl,
                                                               embed_std, grad_norm.float()])),
                            time.perf_counter() - last_time))  # wall time per step, loading included
            last_time = time.perf_counter()
        bar.update(1)
        done = step + 1
        if done % flush_every == 0 or done % cfg.checkpoint_every == 0 or done == total or done == stop_after:
            flush()
        if done % log_every == 0 or done == total:
            r = rows[-1]
            _log.info("step %d/%d epoch %d: loss %.4f, teacher entropy %.3f, KL %.4f, embed std %.3f, lr %.2e, "
                      "momentum %.5f", done, total, r[1], r[2], r[3], r[4], r[5], r[7], r[9])
        if done % cfg.checkpoint_every == 0 and done < total and ctx.is_main:
            ckpt.save(done, {"student": student.state_dict(), "teacher": teacher_model.state_dict(),
                             "loss": dino_loss.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": rng_state(),
                             "metrics": torch.tensor(rows, dtype=torch.float64)})
        if stop_after is not None and done >= stop_after and done < total:
            _log.warning("stopping after step %d as asked; rerun to resume from the last checkpoint", done)
            stopped = True
            break
    bar.close()
    if stopped:
        return None

    # final save: the teacher backbone (the embedder), its config, the metrics
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    table[["step", "epoch"]] = table[["step", "epoch"]].astype(int)
    meta = {
        "backbone": cfg.backbone, "model_kwargs": backbone_kwargs(cfg.model_kwargs, cfg.pooling),
        "img_size": cfg.img_size, "pooling": cfg.pooling, "embed_dim": int(student_bb.num_features),
        "mean": mean, "std": std, "fold": str(fold), "seed": seed, "steps": total, "epochs": cfg.epochs,
        "initial_weights": cfg.weights, "train_slides": train_slides, "n_train_patches": len(train),
        "final_metrics": {k: float(v) for k, v in table.iloc[-1].items()} if len(table) else {},
        "collapse_warnings": monitor.warned, "duvflow_version": code_version(),
        "fingerprint": fingerprint(Embedder(teacher_model.backbone, mean, std, cfg.img_size)),
    }
    if monitor.warned:
        _log.warning("DINO fold %s finished with collapse warnings: %s", fold, ", ".join(monitor.warned))
    if not ctx.is_main:  # every rank holds the same teacher; rank 0 writes it
        return meta
    save_weights(teacher_model.backbone.state_dict(), teacher, metadata={"fold": str(fold), "backbone": cfg.backbone})
    write_json(meta, teacher_config)
    write_csv(table, metrics)
    if plot is not None:
        plot_metrics(table, plot, title=f"DINO fold {fold}")
    ckpt.clear()  # finished: a forced rerun must train afresh, not resume the final step
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
