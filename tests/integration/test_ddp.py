"""Data-parallel training: 2 gloo processes on the CPU train the same model as 1 process with the
same global batch (gradients averaged over ranks, statistics and metrics all-reduced, rank 0 writes).

DINO: the augmentation is switched to a deterministic resize and stochastic depth off, so both runs
see identical views. The classifier seeds its augmentation per sample, so it runs as configured.
Any difference would come from the distributed mechanics themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from duvflow.classifier.train import train_classifier
from duvflow.gpu import GpuJob
from duvflow.splits import make_splits
from duvflow.ssl.train import train_dino

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from ssl_cohort import labels_for, make_cohort, tiny_dino

pytestmark = pytest.mark.slow

DETERMINISTIC_VIEWS = {
    "crops": {"n_local": 2, "local_size": 16, "global_scale": [1.0, 1.0], "local_scale": [1.0, 1.0]},
    "augment": {"hflip_p": 0, "vflip_p": 0, "rot90": False, "jitter_p": 0, "grayscale_p": 0,
                "blur_p_global": [0, 0], "blur_p_local": 0, "solarize_p": 0},
}


ONE, TWO = GpuJob(devices=(), requested=1), GpuJob(devices=("0", "1"), requested=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    labels = labels_for(3, 3)
    tables, stores, statuses = make_cohort(root, labels, n_patches=16, size=32, seed=0)
    make_splits(statuses=statuses, labels=labels, output=root / "splits.csv", splits={"n_folds": 2}, seed=1)
    return root, tables, stores, statuses


def _run(job: GpuJob, cohort, out: Path, dino: dict):
    root, tables, stores, statuses = cohort
    return job.launch(train_dino, tables=tables, stores=stores, statuses=statuses, splits=str(root / "splits.csv"),
                      fold="0", teacher=str(out / "teacher.safetensors"), teacher_config=str(out / "teacher.json"),
                      metrics=str(out / "metrics.csv"), dino=dino, seed=1, checkpoint_dir=str(out / "ckpt"),
                      threads=2, num_workers=0)


@pytest.mark.timeout(300)
def test_dino_two_processes_follow_the_single_process_loss_trajectory(cohort, tmp_path):
    dino = tiny_dino(epochs=2, batch_size=8, lr=0.01, drop_path_rate=0.0, bf16=False, device="cpu",
                     checkpoint_every=4, **DETERMINISTIC_VIEWS)

    single = _run(ONE, cohort, tmp_path / "one", dino)
    # what a rule with gpu=2 does with its two cards: torchrun, one worker each (gloo on the CPU)
    double = _run(TWO, cohort, tmp_path / "two", dino)

    one = pd.read_csv(tmp_path / "one" / "metrics.csv")
    two = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert len(one) == len(two) == 2 * (32 // 8)  # 32 training patches (fold 0: 2 slides x 16), batches of 8
    assert one["loss"].std() > 1e-3, "the loss must move for the comparison to mean anything"
    torch.testing.assert_close(torch.tensor(two["loss"].to_numpy()), torch.tensor(one["loss"].to_numpy()),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(two["teacher_entropy"].to_numpy()),
                               torch.tensor(one["teacher_entropy"].to_numpy()), rtol=1e-4, atol=1e-5)
    # same teacher weights at the end (EMA of identical students)
    w1, w2 = load_file(tmp_path / "one" / "teacher.safetensors"), load_file(tmp_path / "two" / "teacher.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # rank 0's result reaches the job; only rank 0 wrote (and cleared its checkpoints at the end)
    assert double["steps"] == single["steps"] == len(one)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.timeout(300)
def test_classifier_two_processes_train_the_single_process_model(cohort, tmp_path):
    root, tables, stores, statuses = cohort
    config = {"model": "vit_base_patch16_224", "img_size": 32, "epochs": 2, "batch_size": 8, "lr": 2e-3,
              "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
              "warmup_epochs": 0.5, "num_workers": 0, "checkpoint_every": 2, "bf16": False, "device": "cpu"}

    def run(job, out):
        return job.launch(train_classifier, tables=tables, stores=stores, statuses=statuses,
                          splits=str(root / "splits.csv"), fold="0", arm="real",
                          model_output=str(out / "model.safetensors"), meta_output=str(out / "model.json"), metrics_output=str(out / "metrics.csv"),
                          checkpoint_dir=str(out) + ".ckpt", config=config, seed=3, threads=2)

    single, double = run(ONE, tmp_path / "one"), run(TWO, tmp_path / "two")
    one, two = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert len(one) == len(two) == 2
    for col in ("train_loss", "val_patch_loss"):
        torch.testing.assert_close(torch.tensor(two[col].to_numpy()), torch.tensor(one[col].to_numpy()),
                                   rtol=1e-4, atol=1e-5)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert double["selected_epoch"] == single["selected_epoch"] and double["steps"] == single["steps"]
