"""Memorisation audit and the generative floor (VAE reconstruction metrics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ldm_testdata import VAE_CFG, make_cohort

from duvflow.ldm.fidelity import InceptionFeatures, find_inception
from duvflow.ldm.memorisation import audit_memorisation, nearest_neighbours
from duvflow.ldm.reconstruction import measure_reconstruction, psnr, reconstruction_metrics

torch.set_num_threads(1)


def test_nearest_neighbours_match_brute_force_and_skip_self():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.normal(size=(50, 5)))
    queries = torch.from_numpy(rng.normal(size=(7, 5)))
    full = np.linalg.norm(queries.numpy()[:, None] - ref.numpy()[None], axis=2)
    dist, idx = nearest_neighbours(queries, ref, chunk=3)
    assert (idx == full.argmin(1)).all() and np.allclose(dist, full.min(1))
    self_d = np.linalg.norm(ref.numpy()[:, None] - ref.numpy()[None], axis=2)
    np.fill_diagonal(self_d, np.inf)
    dist, idx = nearest_neighbours(ref, ref, exclude_self=True, chunk=16)
    assert (idx == self_d.argmin(1)).all() and np.allclose(dist, self_d.min(1)) and (dist > 0).all()


def test_a_planted_copy_of_a_training_patch_is_a_near_copy():
    rng = np.random.default_rng(1)
    real = torch.from_numpy(rng.normal(size=(300, 16)))
    fresh = torch.from_numpy(rng.normal(size=(40, 16)))
    synthetic = torch.cat([fresh, real[17:18] + 1e-6])  # the last one copies real patch 17
    audit = audit_memorisation(real, synthetic, space="dino", normalise=True)
    assert audit.nearest_real[-1] == 17 and audit.synthetic_distance[-1] < audit.threshold
    assert audit.n_near_copies >= 1 and audit.near_copy_fraction < 0.1  # fresh samples are not copies
    assert audit.threshold == pytest.approx(np.percentile(audit.real_distance, 1.0))
    summary = audit.summary()
    assert summary["near_copies_dino"] == audit.n_near_copies
    assert summary["near_copy_fraction_dino"] == pytest.approx(audit.n_near_copies / 41)


def test_inception_input_is_pytorch_fid_preprocessing():
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros(len(x), 2048)

    images = torch.rand(2, 3, 40, 40)
    InceptionFeatures(Recorder())(images)
    expected = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.equal(seen["x"], expected)


def test_identity_autoencoder_has_zero_rfid_and_infinite_psnr():
    extractor, source = find_inception(None)
    assert extractor is not None, source
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, 32, 32, generator=g) * 255).round() / 255 for _ in range(6)]
    result = reconstruction_metrics(images, lambda x: x, inception=extractor, batch_size=4, device="cpu")
    assert result["psnr"] == math.inf and result["psnr_exact_fraction"] == 1.0
    assert result["ssim"] == pytest.approx(1.0) and result["rfid"] == pytest.approx(0.0, abs=1e-2)
    blurred = reconstruction_metrics(images, lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
                                     inception=extractor, batch_size=4, device="cpu")
    assert 0 < blurred["psnr"] < 20 and blurred["ssim"] < 0.5 and blurred["rfid"] > 10


def test_psnr_formula():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0)


def test_measure_reconstruction_uses_held_back_validation_patches(tmp_path):
    from duvflow.core.config import from_dict
    from duvflow.ldm.config import VaeConfig
    from duvflow.ldm.vae import build_vae

    paths = make_cohort(tmp_path, patches_per_slide=3)
    torch.manual_seed(0)
    build_vae(from_dict(VaeConfig, VAE_CFG)).save_pretrained(tmp_path / "vae")
    out = tmp_path / "rec.json"
    measure_reconstruction(vae=str(tmp_path / "vae"), **paths, fold="0", image_size=32, output=str(out),
                           fidelity={"batch_size": 4}, seed=0)
    result = json.loads(out.read_text())
    # fold 0 has one validation slide (s2) of 3 patches; an untrained VAE reconstructs badly
    assert result["n_images"] == 3 and "validation" in result["patches"]
    assert result["psnr"] < 30 and result["ssim"] < 0.9 and result["rfid"] > 0
    assert result["fold"] == "0" and "duvflow_version" in result
