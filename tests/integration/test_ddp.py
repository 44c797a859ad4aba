"""Data-parallel training: 2 gloo processes on the CPU train the same models as 1 process with the
same global batch (gradients averaged over ranks, statistics and metrics all-reduced, rank 0
writes), for the four trainers that support it: DINO, the classifier, the VAE and the LDM.

DINO's augmentation is switched to a deterministic resize and stochastic depth off, so both runs
see identical views; the classifier seeds its augmentation per sample and the LDM draws the global
batch's noise on every rank, and so does the VAE (augmentation and posterior noise), so they run
as configured. Any difference between the runs would
come from the distributed mechanics themselves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from duvflow.core.splits import make_splits
from duvflow.gpu import GpuJob
from duvflow.ldm.train import train_vae
from duvflow.ldm.vae import encode_latents

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))
import ldm_testdata
from ddp_targets import train_all
from ssl_cohort import labels_for, make_cohort, tiny_dino

pytestmark = pytest.mark.slow

DETERMINISTIC_VIEWS = {
    "crops": {"n_local": 2, "local_size": 16, "global_scale": [1.0, 1.0], "local_scale": [1.0, 1.0]},
    "augment": {"hflip_p": 0, "vflip_p": 0, "rot90": False, "jitter_p": 0, "grayscale_p": 0,
                "blur_p_global": [0, 0], "blur_p_local": 0, "solarize_p": 0},
}
CLASSIFIER = {"model": "vit_base_patch16_224", "img_size": 32, "epochs": 2, "batch_size": 8, "lr": 2e-3,
              "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
              "warmup_epochs": 0.5, "num_workers": 0, "checkpoint_every": 2, "mixed_precision": False, "device": "cpu"}
CLOSE = {"rtol": 1e-4, "atol": 1e-5}


def _runs(data: dict, out: Path) -> list[tuple[str, dict]]:
    """The three trainings, writing under ``out``."""
    root, tables, stores, statuses = data["ssl"]
    cohort = {"tables": tables, "stores": stores, "statuses": statuses, "splits": str(root / "splits.csv")}
    dino = tiny_dino(epochs=2, batch_size=8, lr=0.01, drop_path_rate=0.0, mixed_precision=False, device="cpu",
                     checkpoint_every=4, **DETERMINISTIC_VIEWS)
    ldm = {**ldm_testdata.LDM_CFG, "steps": 8, "log_every": 1, "checkpoint_every": 4, "device": "cpu"}
    vae = {**ldm_testdata.VAE_CFG, "steps": 6, "augment": True, "log_every": 1, "checkpoint_every": 3,
           "device": "cpu"}
    return [
        ("dino", dict(**cohort, fold="0", teacher=str(out / "dino" / "teacher.safetensors"),
                      teacher_config=str(out / "dino" / "teacher.json"), metrics=str(out / "dino" / "metrics.csv"),
                      dino=dino, seed=1, checkpoint_dir=str(out / "dino.ckpt"), threads=2, num_workers=0)),
        ("classifier", dict(**cohort, fold="0", arm="real", model_output=str(out / "clf" / "model.safetensors"),
                            meta_output=str(out / "clf" / "model.json"),
                            metrics_output=str(out / "clf" / "metrics.csv"), checkpoint_dir=str(out / "clf.ckpt"),
                            classifier=CLASSIFIER, seed=3, threads=2)),
        ("vae", dict(**data["ldm_cohort"], fold="0", output=str(out / "vae"), checkpoint_dir=str(out / "vae.ckpt"),
                     vae=vae, seed=7, threads=2)),
        ("ldm", {"latents": data["latents"], "vae": data["vae"], "output": str(out / "ldm"),
                 "checkpoint_dir": str(out / "ldm.ckpt"), "condition": "ssl", "fold": "0", "ldm": ldm, "seed": 5,
                 "embeddings": data["embeddings"], "threads": 2}),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Inputs, then the single-process runs (in this process) and the 2-process runs (torchrun)."""
    root = tmp_path_factory.mktemp("ddp")
    labels = labels_for(3, 3)
    tables, stores, statuses = make_cohort(root / "ssl", labels, n_patches=16, size=32, seed=0)
    make_splits(statuses=statuses, labels=labels, output=root / "ssl" / "splits.csv", splits={"n_folds": 2}, seed=1)
    ldm_root = root / "ldm"
    ldm_cohort = ldm_testdata.make_cohort(ldm_root)
    train_vae(**ldm_cohort, fold="0", output=str(ldm_root / "vae"), checkpoint_dir=str(ldm_root / "vae.ckpt"),
              vae={**ldm_testdata.VAE_CFG, "steps": 2}, seed=11)
    encode_latents(vae_model=str(ldm_root / "vae"), **ldm_cohort, fold="0", output=str(ldm_root / "latents.h5"),
                   vae=ldm_testdata.VAE_CFG)
    data = {"ssl": (root / "ssl", tables, stores, statuses), "vae": str(ldm_root / "vae"),
            "latents": str(ldm_root / "latents.h5"), "ldm_cohort": ldm_cohort, "embeddings": ldm_testdata.make_embeddings(ldm_root, "0")}

    single = train_all(_runs(data, root / "one"))
    # what a rule with gpu=2 does with its two cards: torchrun, one worker per card (gloo on the CPU)
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(HERE.parent / "unit"), os.environ.get("PYTHONPATH", "")]))
    try:
        double = GpuJob(devices=("0", "1"), requested=2).launch(train_all, runs=_runs(data, root / "two"))
    finally:
        mp.undo()
    return {"one": root / "one", "two": root / "two", "single": single, "double": double}


def _close(a, b):
    def as_tensor(x):
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # a writable copy

    torch.testing.assert_close(as_tensor(a), as_tensor(b), **CLOSE)


def _same_weights(path_a: Path, path_b: Path):
    a, b = load_file(path_a), load_file(path_b)
    assert a.keys() == b.keys()
    for k in a:
        _close(a[k], b[k])


def test_dino_follows_the_single_process_loss_trajectory(runs):
    one = pd.read_csv(runs["one"] / "dino" / "metrics.csv")
    two = pd.read_csv(runs["two"] / "dino" / "metrics.csv")
    assert len(one) == len(two) == 2 * (32 // 8)  # fold 0: 2 training slides x 16 patches, batches of 8
    assert one["loss"].std() > 1e-3, "the loss must move for the comparison to mean anything"
    _close(two["loss"].to_numpy(), one["loss"].to_numpy())
    _close(two["teacher_entropy"].to_numpy(), one["teacher_entropy"].to_numpy())
    _same_weights(runs["one"] / "dino" / "teacher.safetensors", runs["two"] / "dino" / "teacher.safetensors")
    # rank 0's result came back to the job; only rank 0 wrote, and it cleared its checkpoints
    assert runs["double"][0]["steps"] == runs["single"][0]["steps"] == len(one)
    assert not any((runs["two"] / "dino.ckpt").glob("checkpoint-*"))


def test_classifier_trains_the_single_process_model(runs):
    one = pd.read_csv(runs["one"] / "clf" / "metrics.csv")
    two = pd.read_csv(runs["two"] / "clf" / "metrics.csv")
    assert len(one) == len(two) == 2
    for col in ("train_loss", "val_patch_loss"):
        _close(two[col].to_numpy(), one[col].to_numpy())
    _same_weights(runs["one"] / "clf" / "model.safetensors", runs["two"] / "clf" / "model.safetensors")
    assert runs["double"][1]["selected_epoch"] == runs["single"][1]["selected_epoch"]


def test_ldm_follows_the_single_process_loss_trajectory(runs):
    one = pd.read_csv(runs["one"] / "ldm" / "metrics.csv")
    two = pd.read_csv(runs["two"] / "ldm" / "metrics.csv")
    assert len(one) == len(two) == 8
    _close(two["loss"].to_numpy(), one["loss"].to_numpy())
    for part in ("unet", "condition"):
        _same_weights(runs["one"] / "ldm" / part / "diffusion_pytorch_model.safetensors",
                      runs["two"] / "ldm" / part / "diffusion_pytorch_model.safetensors")


def test_vae_follows_the_single_process_loss_trajectory(runs):
    one = pd.read_csv(runs["one"] / "vae" / "metrics.csv")
    two = pd.read_csv(runs["two"] / "vae" / "metrics.csv")
    assert len(one) == len(two) == 6
    assert one["loss"].std() > 1e-4, "the loss must move for the comparison to mean anything"
    for col in ("loss", "recon", "kl"):
        _close(two[col].to_numpy(), one[col].to_numpy())
    _same_weights(runs["one"] / "vae" / "diffusion_pytorch_model.safetensors",
                  runs["two"] / "vae" / "diffusion_pytorch_model.safetensors")
    scaling = [json.loads((runs[k] / "vae" / "config.json").read_text())["scaling_factor"] for k in ("one", "two")]
    assert scaling[0] == pytest.approx(scaling[1], rel=1e-4)
    assert not (runs["two"] / "vae.ckpt").exists()  # rank 0 finished and cleared the resumable state
