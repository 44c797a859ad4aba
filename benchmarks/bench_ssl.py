"""Throughput of the SSL stage against bare model loops (targets from issue 3).

1. Embedding: ``compute_embeddings`` (HDF5 store -> DataLoader workers -> resize -> model) in
   patches/s vs a bare ``model(x)`` loop over preloaded, already-resized tensors of the same batch
   size. Target ratio >= 0.85.
2. DINO: time per training step of ``train_dino`` (data, multi-crop augmentation, forward, loss,
   backward, clipping, optimizer, EMA, metrics) vs a bare forward+backward of student and teacher
   on preloaded views of the same batch. Target ratio (bare / full) >= 0.8. The per-step time of
   ``train_dino`` is its own ``step_time_s`` metric (median after the first half epoch), so model
   building and start-up are not counted.

Usage: python benchmarks/bench_ssl.py [--threads 2] [--device auto] [--size small|micro|paper]
(`paper` = ViT-S/16 at 224 px with 8 local crops at 96 px, batch 64: for a GPU.)
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duvflow.core.runtime import autocast, configure_threads, select_device
from duvflow.slides.store import PatchStoreWriter
from duvflow.ssl.embed import compute_embeddings
from duvflow.ssl.head import DINOHead, MultiCropModel
from duvflow.ssl.loss import DINOLoss
from duvflow.ssl.model import Embedder, build_backbone, data_stats
from duvflow.ssl.train import train_dino

SIZES = {
    # ViT-Ti/8 (the real vit_tiny widths, 8-px patches) at 64 px: the smallest realistic model
    "small": {"backbone": "vit_tiny_patch16_224", "model_kwargs": {"patch_size": 8},
              "img_size": 64, "local_size": 32, "n_local": 4, "batch": 32, "head": (4096, 256, 64), "patch": 200,
              "n_patches": 640, "embed_batch": 64},
    # the demo config's micro ViT (64 wide, 3 blocks): cheaper than decoding a patch on one core
    "micro": {"backbone": "vit_tiny_patch16_224",
              "model_kwargs": {"patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4, "mlp_ratio": 2.0},
              "img_size": 64, "local_size": 32, "n_local": 4, "batch": 32, "head": (4096, 256, 64), "patch": 200,
              "n_patches": 640, "embed_batch": 64},
    "paper": {"backbone": "vit_small_patch16_224", "model_kwargs": {}, "img_size": 224, "local_size": 96,
              "n_local": 8, "batch": 64, "head": (65536, 2048, 256), "patch": 400, "n_patches": 4096,
              "embed_batch": 256},
}


def make_stores(root: Path, n: int, patch: int, n_slides: int = 4):
    """Random-texture patches in lzf stores (decode cost like real tiles), with tile tables."""
    rng = np.random.default_rng(0)
    tables, stores, rows = [], [], []
    per = n // n_slides
    base = rng.integers(0, 255, (64, patch, patch, 3), dtype=np.uint8)
    for s in range(n_slides):
        sid = f"S{s}"
        label = "benign" if s % 2 == 0 else "malignant"
        store = root / f"{sid}.h5"
        with PatchStoreWriter(store, per, patch, compression="lzf") as w:
            for i in range(per):
                w.write(i, np.roll(base[i % 64], i, axis=0), (i * patch, 0))
        table = pd.DataFrame({"slide_id": sid, "patch_index": np.arange(per), "x": np.arange(per) * patch, "y": 0,
                              "level": 0, "size": patch, "size_level0": patch, "tissue_fraction": 1.0,
                              "label": label})
        table.to_parquet(root / f"{sid}.parquet", index=False)
        tables.append(str(root / f"{sid}.parquet"))
        stores.append(str(store))
        rows.append(table.assign(store=str(store), label_int=s % 2))
    return tables, stores, pd.concat(rows, ignore_index=True)


def timed(fn, repeats: int) -> float:
    """Median seconds per call (the median resists other jobs' bursts on a shared machine)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_embed(cfg, index, device, workers: int, threads: int) -> tuple[float, float]:
    """Patches/s of a bare loop and of the embed step, both with the compute threads the embed step
    uses (the job's threads minus its loader workers on the CPU)."""
    bb = build_backbone(cfg["backbone"], model_kwargs=cfg["model_kwargs"], pooling="cls", img_size=cfg["img_size"],
                        weights=None, hub=False, seed=0)
    model = Embedder(bb, *data_stats(bb), cfg["img_size"]).to(device).eval()
    n, b = len(index), cfg["embed_batch"]
    x = torch.rand(b, 3, cfg["img_size"], cfg["img_size"], device=device)

    def bare():
        with torch.inference_mode(), autocast(device):
            for _ in range(n // b):
                model(x)

    # alternate the two so both see the same share of a shared machine
    if device.type == "cpu" and workers:
        torch.set_num_threads(max(1, threads - workers))
    t_bare, t_full = [], []
    for _ in range(3):
        t_bare.append(timed(bare, 1) / ((n // b) * b))
        t_full.append(timed(lambda: compute_embeddings(model, index, batch_size=b, device=device,
                                                       num_workers=workers), 1) / n)
    t_bare, t_full = float(np.median(t_bare)), float(np.median(t_full))
    torch.set_num_threads(threads)
    return 1 / t_bare, 1 / t_full


def bench_dino_bare(cfg, device):
    bb = build_backbone(cfg["backbone"], model_kwargs=cfg["model_kwargs"], pooling="cls", img_size=cfg["img_size"],
                        weights=None, hub=False, seed=0)
    out_dim, hidden, bottleneck = cfg["head"]
    student = MultiCropModel(bb, DINOHead(bb.num_features, out_dim, hidden, bottleneck), *data_stats(bb)).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    loss_fn = DINOLoss(out_dim).to(device)
    b, g, loc = cfg["batch"], cfg["img_size"], cfg["local_size"]
    views = [torch.rand(b, 3, g, g, device=device) for _ in range(2)]
    views += [torch.rand(b, 3, loc, loc, device=device) for _ in range(cfg["n_local"])]

    def step():
        with autocast(device):
            with torch.no_grad():
                _, t_out = teacher(views[:2])
            _, s_out = student(views)
        loss, _ = loss_fn(s_out, t_out, 0.04)
        student.zero_grad(set_to_none=True)
        loss.backward()

    return step


def bench_dino_full(cfg, root: Path, tables, stores, device, threads: int) -> np.ndarray:
    labels = pd.concat([pd.read_parquet(t)[["slide_id", "label"]].drop_duplicates() for t in tables])
    splits = root / "splits.csv"
    labels.assign(fold="0", role="train").to_csv(splits, index=False)
    n_train = sum(len(pd.read_parquet(t)) for t in tables)
    steps_per_epoch = n_train // cfg["batch"]
    out_dim, hidden, bottleneck = cfg["head"]
    dino = {"backbone": cfg["backbone"], "model_kwargs": cfg["model_kwargs"], "img_size": cfg["img_size"],
            "head": {"out_dim": out_dim, "hidden_dim": hidden, "bottleneck_dim": bottleneck},
            "crops": {"n_local": cfg["n_local"], "local_size": cfg["local_size"]}, "batch_size": cfg["batch"],
            "checkpoint_every": 10**6, "device": str(device.type)}
    train_dino(tables=tables, stores=stores, statuses=None, splits=str(splits), fold="0",
               teacher=root / "t.safetensors", teacher_config=root / "t.json", metrics=root / "m.csv",
               dino={**dino, "epochs": 3}, seed=0, checkpoint_dir=root / "ckpt", threads=threads)
    step_time = pd.read_csv(root / "m.csv")["step_time_s"].to_numpy()
    return step_time[steps_per_epoch // 2:]  # after loader start-up and warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--skip", choices=["embed", "dino"], action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import os

    os.environ.setdefault("DUVFLOW_PROGRESS", "0")
    configure_threads(args.threads)
    device = select_device(args.device)
    cfg = SIZES[args.size]
    workers = max(0, min(args.threads - 1, 8))
    print(f"device {device}, torch threads {args.threads}, DataLoader workers {workers}, size {args.size}: "
          f"{cfg['backbone']} {cfg['model_kwargs']} at {cfg['img_size']} px")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tables, stores, index = make_stores(root, cfg["n_patches"], cfg["patch"])
        if "embed" not in args.skip:
            bare, full = bench_embed(cfg, index, device, workers, args.threads)
            print(f"embed: bare model(x) {bare:9.1f} patches/s | embed step {full:9.1f} patches/s "
                  f"(from {cfg['patch']} px stores, batch {cfg['embed_batch']}) | ratio {full / bare:.2f} "
                  f"(target >= 0.85)")
        if "dino" not in args.skip:
            step = bench_dino_bare(cfg, device)
            # same compute threads as train_dino (on the CPU: the job's threads minus its loader worker)
            compute = max(1, args.threads - workers) if device.type == "cpu" else args.threads
            torch.set_num_threads(compute)
            bare_before = timed(step, 5)
            full = bench_dino_full(cfg, root, tables, stores, device, args.threads)
            torch.set_num_threads(compute)
            bare = min(bare_before, timed(step, 5))
            torch.set_num_threads(args.threads)
            bare_all = timed(step, 5)
            print(f"dino:  bare fwd+bwd with all {args.threads} threads: {bare_all * 1000:.1f} ms/step (information)")
            print(f"dino:  bare fwd+bwd ({compute} threads) {bare * 1000:8.1f} ms/step | train_dino step {np.median(full) * 1000:8.1f} "
                  f"ms/step median, {np.mean(full) * 1000:.1f} mean over {len(full)} steps (batch {cfg['batch']}, "
                  f"2x{cfg['img_size']} + {cfg['n_local']}x{cfg['local_size']} px crops) | "
                  f"ratio {bare / np.median(full):.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
