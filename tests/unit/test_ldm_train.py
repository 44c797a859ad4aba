"""Short end-to-end runs of the LDM stage on a tiny cohort: VAE -> latents -> LDM -> samples."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from ldm_testdata import LDM_CFG, ROLES, SAMPLING_CFG, SLIDES, VAE_CFG, make_cohort, make_embeddings

from duvflow.ldm.model import load_ldm, save_ldm
from duvflow.ldm.sample import sample_images, sample_synthetic, synthetic_count
from duvflow.ldm.train import train_ldm, train_vae
from duvflow.ldm.vae import encode_latents, load_vae
from duvflow.train.checkpoint import CheckpointManager

torch.set_num_threads(1)
SEED = 11


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Cohort, a trained micro VAE, the latent store and an embedding table of fold 0."""
    root = tmp_path_factory.mktemp("ldm")
    cohort = make_cohort(root)
    train_vae(**cohort, fold="0", output=str(root / "vae"), checkpoint_dir=str(root / "vae.ckpt"), vae=VAE_CFG,
              seed=SEED)
    encode_latents(vae_model=str(root / "vae"), **cohort, fold="0", output=str(root / "latents.h5"), vae=VAE_CFG)
    emb = make_embeddings(root, "0")
    return {"root": root, "cohort": cohort, "vae": str(root / "vae"), "latents": str(root / "latents.h5"),
            "embeddings": emb, "runs": {}}


def _train(stage, name, condition="ssl", **overrides):
    root = stage["root"]
    out = root / "ldm" / name
    train_ldm(latents=stage["latents"], vae=stage["vae"], output=str(out), checkpoint_dir=str(out) + ".ckpt",
              condition=condition, fold="0", ldm={**LDM_CFG, **overrides}, seed=SEED,
              embeddings=stage["embeddings"] if condition == "ssl" else None)
    return out


def _ssl_model(stage):
    if "ssl" not in stage["runs"]:
        stage["runs"]["ssl"] = _train(stage, "ssl")
    return stage["runs"]["ssl"]



@contextlib.contextmanager
def _time_out_at_first_checkpoint(monkeypatch):
    """Inside: the first checkpoint is saved, then the run stops as a time-out would (KeyboardInterrupt)."""
    original = CheckpointManager.save

    def save_then_die(self, step, state):
        original(self, step, state)
        raise KeyboardInterrupt("simulated time-out")

    monkeypatch.setattr(CheckpointManager, "save", save_then_die)
    try:
        yield
    finally:
        monkeypatch.setattr(CheckpointManager, "save", original)


def _assert_same_vae(path, reference_path):
    """The VAE at ``path`` has the reference's weights (to float rounding); returns both models."""
    resumed, reference = load_vae(path), load_vae(reference_path)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    return resumed, reference


def test_vae_training_output(stage):
    vae = load_vae(stage["vae"])
    metrics = pd.read_csv(f"{stage['vae']}/metrics.csv")
    assert metrics["step"].tolist() == list(range(1, VAE_CFG["steps"] + 1))
    assert np.isfinite(metrics["loss"]).all()
    assert vae.config.scaling_factor > 0 and vae.config.scaling_factor != 1.0  # estimated from the latents
    assert not (stage["root"] / "vae.ckpt").exists()  # removed once the model is saved


def test_vae_resumes_after_interruption(stage, monkeypatch):
    root = stage["root"]
    kw = {**stage["cohort"], "fold": "0", "output": str(root / "vae2"), "checkpoint_dir": str(root / "vae2.ckpt"),
          "vae": VAE_CFG, "seed": SEED}
    with _time_out_at_first_checkpoint(monkeypatch), pytest.raises(KeyboardInterrupt):
        train_vae(**kw)
    assert not (root / "vae2").exists() and (root / "vae2.ckpt" / "checkpoint-00000003.pt").is_file()
    train_vae(**kw)
    resumed, reference = _assert_same_vae(root / "vae2", stage["vae"])
    assert resumed.config.scaling_factor == pytest.approx(reference.config.scaling_factor)


def test_ldm_training_loss_decreases(stage):
    out = _ssl_model(stage)
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == list(range(5, LDM_CFG["steps"] + 1, 5))
    assert metrics["loss"].iloc[-2:].mean() < 0.8 * metrics["loss"].iloc[:2].mean()
    _, encoder, scheduler, meta = load_ldm(out)
    assert encoder.config.kind == "ssl" and encoder.config.embed_dim == 16
    assert meta["latent_size"] == 16 and meta["steps"] == LDM_CFG["steps"]
    assert scheduler.config.prediction_type == "epsilon"


def test_resume_after_interruption_continues_to_the_same_model(stage, monkeypatch, caplog):
    reference = _ssl_model(stage)
    with _time_out_at_first_checkpoint(monkeypatch), pytest.raises(KeyboardInterrupt):
        _train(stage, "resumed")
    assert not (stage["root"] / "ldm" / "resumed").exists()  # nothing half-written looks finished
    assert (stage["root"] / "ldm" / "resumed.ckpt" / "checkpoint-00000020.pt").is_file()
    with caplog.at_level(logging.INFO, logger="duvflow.train.checkpoint"):
        out = _train(stage, "resumed")
    assert "resuming from" in caplog.text and "step 20" in caplog.text
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == list(range(5, LDM_CFG["steps"] + 1, 5))  # each step once
    assert not (stage["root"] / "ldm" / "resumed.ckpt").exists()
    ref_unet, ref_enc, _, _ = load_ldm(reference)
    unet, enc, _, _ = load_ldm(out)
    for a, b in zip(ref_unet.state_dict().values(), unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(ref_enc.proj.weight, enc.proj.weight, rtol=0, atol=1e-6)


def test_reloaded_model_gives_identical_samples(stage, tmp_path):
    unet, encoder, scheduler, meta = load_ldm(_ssl_model(stage))
    vae = load_vae(stage["vae"])
    conds = torch.randn(3, 16)
    kw = {"steps": 3, "guidance": 2.0, "latent_shape": (4, 16, 16), "device": torch.device("cpu")}
    first = sample_images(unet, encoder, vae, scheduler, conds, [5, 6, 7], **kw)
    save_ldm(tmp_path / "copy", unet, encoder, scheduler, meta)
    unet2, encoder2, scheduler2, _ = load_ldm(tmp_path / "copy")
    again = sample_images(unet2, encoder2, vae, scheduler2, conds, [5, 6, 7], **kw)
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    other = sample_images(unet2, encoder2, vae, scheduler2, conds, [8, 6, 7], **kw)
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1:], other[1:])


@pytest.mark.parametrize("condition", ["ssl", "class"])
def test_synthetic_folder_and_provenance(stage, condition):
    model = _ssl_model(stage) if condition == "ssl" else _train(stage, "class", "class", steps=5, log_every=5)
    out = stage["root"] / "synthetic" / condition
    kw = {"model": str(model), "vae": stage["vae"], "latents": stage["latents"], "condition": condition, "fold": "0",
          "sampling": SAMPLING_CFG, "seed": 3, "embeddings": stage["embeddings"]}
    sample_synthetic(output=str(out), **kw)
    manifest = pd.read_parquet(out / "manifest.parquet")
    n_real = 3 * 8  # fold 0 has three training slides of 8 patches
    assert len(manifest) == synthetic_count(n_real, SAMPLING_CFG["synthetic_fraction"]) == 6
    train_slides = {s for s, r in ROLES["0"].items() if r == "train"}
    assert set(manifest["source_slide"]) <= train_slides
    assert (manifest["label"] == manifest["source_slide"].map(SLIDES)).all()
    # stratified: the training set is 2/3 benign, so are the synthetic patches
    assert (manifest["label"] == "benign").sum() == 4
    assert (manifest["guidance"] == 2.0).all() and (manifest["steps"] == 4).all()
    assert manifest["seed"].is_unique
    from PIL import Image

    with Image.open(out / manifest["file"].iloc[0]) as im:
        assert im.size == (32, 32)
    # deterministic given the seed
    sample_synthetic(output=str(out) + "_again", **kw)
    again = pd.read_parquet(f"{out}_again/manifest.parquet")
    pd.testing.assert_frame_equal(manifest, again)
    for f in manifest["file"]:
        assert (out / f).read_bytes() == (stage["root"] / "synthetic" / f"{condition}_again" / f).read_bytes()
    with pytest.raises(ValueError, match="conditioned on"):
        sample_synthetic(output=str(out) + "_wrong", **{**kw, "condition": "class" if condition == "ssl" else "ssl"})


def test_vae_resume_ignores_changed_run_time_settings(stage, monkeypatch, caplog):
    """A time-out after the first checkpoint, then a rerun with other workers, logging cadence and
    device: the run continues from its checkpoint to the uninterrupted run's weights."""
    root = stage["root"]
    kw = {**stage["cohort"], "fold": "0", "output": str(root / "vae3"), "checkpoint_dir": str(root / "vae3.ckpt"),
          "vae": VAE_CFG, "seed": SEED}
    with _time_out_at_first_checkpoint(monkeypatch), pytest.raises(KeyboardInterrupt):
        train_vae(**kw)
    changed = {**VAE_CFG, "num_workers": 1, "log_every": 2, "device": "cpu", "encode_batch_size": 4}
    with caplog.at_level(logging.INFO, logger="duvflow.train.checkpoint"):
        train_vae(**{**kw, "vae": changed})
    assert "resuming from" in caplog.text and "step 3" in caplog.text
    metrics = pd.read_csv(root / "vae3" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4, 6]  # logged every step before, every 2nd after
    _assert_same_vae(root / "vae3", stage["vae"])


def test_vae_sigterm_writes_a_checkpoint_and_exits_non_zero(stage, monkeypatch):
    """SIGTERM (a SLURM time-out or scancel) mid-run: the step in progress ends, is checkpointed
    although no checkpoint was due, nothing looks finished, and the rerun resumes from it."""
    import os
    import signal

    import duvflow.ldm.train as ldm_train
    from duvflow.train.harness import TrainingInterrupted

    root, original, calls = stage["root"], ldm_train._vae_step, []

    def step_then_sigterm(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    kw = {**stage["cohort"], "fold": "0", "output": str(root / "vae4"), "checkpoint_dir": str(root / "vae4.ckpt"),
          "vae": VAE_CFG, "seed": SEED}
    monkeypatch.setattr(ldm_train, "_vae_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted) as err:
        train_vae(**kw)
    assert err.value.code != 0
    assert not (root / "vae4").exists()
    assert sorted(p.name for p in (root / "vae4.ckpt").iterdir()) == ["checkpoint-00000002.pt"]  # due only at 3
    monkeypatch.undo()
    train_vae(**kw)
    resumed, reference = load_vae(root / "vae4"), load_vae(stage["vae"])
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not (root / "vae4.ckpt").exists()
