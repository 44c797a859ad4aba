"""Baseline arms: handcrafted patch features and the per-fold logistic regression behind `probe` and
`handcrafted`, whose output the ordinary slide aggregation consumes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from duvflow.baselines.config import BaselineConfig, HandcraftedConfig
from duvflow.baselines.features import extract_patch_features, feature_columns, patch_features
from duvflow.baselines.linear import fit_baseline
from duvflow.core.config import from_dict
from duvflow.core.io import atomic_path
from duvflow.evaluate.aggregate import aggregate_slides
from duvflow.slides.store import PatchStore, PatchStoreWriter

CFG = HandcraftedConfig(image_size=32, lbp_radii=(1, 2), glcm_levels=16, glcm_distances=(1,))


def test_features_of_a_flat_patch_are_the_textbook_values():
    patch = np.full((48, 48, 3), (200, 120, 160), dtype=np.uint8)
    names = feature_columns(CFG)
    f = dict(zip(names, patch_features(patch, CFG), strict=True))
    assert len(names) == len(set(names)) == 6 * 3 + 3 + 10 + 18 + 6
    assert f["rgb_r_mean"] == pytest.approx(200 / 255) and f["rgb_g_std"] == pytest.approx(0, abs=1e-6)
    assert f["glcm_d1_contrast"] == 0 and f["glcm_d1_homogeneity"] == 1 and f["glcm_d1_energy"] == 1
    lbp = [f[f"lbp_r1_bin{b}"] for b in range(10)]
    # every interior pixel has the flat pattern (all 8 neighbours >= centre: code 8); borders see zero padding
    assert sum(lbp) == pytest.approx(1) and lbp[8] == max(lbp) > 0.85


def test_features_tell_stain_and_texture_apart():
    rng = np.random.default_rng(0)
    pink = np.full((32, 32, 3), (230, 150, 200), dtype=np.uint8)  # eosin-like
    purple = np.full((32, 32, 3), (90, 60, 150), dtype=np.uint8)  # haematoxylin-like
    noisy = np.clip(pink + rng.normal(0, 40, pink.shape), 0, 255).astype(np.uint8)
    names = feature_columns(CFG)

    def feat(p):
        return dict(zip(names, patch_features(p, CFG), strict=True))

    assert feat(purple)["hed_h_mean"] > feat(pink)["hed_h_mean"]
    assert feat(noisy)["glcm_d1_contrast"] > feat(pink)["glcm_d1_contrast"] + 1
    assert feat(noisy)["rgb_r_std"] > 0.05


def _slide(tmp_path, slide_id: str, label: str, colour, n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    patches = np.clip(np.asarray(colour) + rng.normal(0, 12, (n, 40, 40, 3)), 0, 255).astype(np.uint8)
    store = tmp_path / f"{slide_id}.h5"
    with atomic_path(store) as tmp, PatchStoreWriter(tmp, n, 40) as writer:
        for i, p in enumerate(patches):
            writer.write(i, p, (40 * i, 0))
    table = tmp_path / f"{slide_id}.parquet"
    pd.DataFrame({"slide_id": slide_id, "patch_index": np.arange(n), "x": 40 * np.arange(n), "y": 0,
                  "label": label}).to_parquet(table)
    status = tmp_path / f"{slide_id}.json"
    status.write_text(json.dumps({"slide_id": slide_id, "status": "ok"}))
    return table, store, status


def test_handcrafted_arm_end_to_end_feeds_the_ordinary_aggregation(tmp_path):
    config = {"handcrafted": {"image_size": 32, "lbp_radii": [1], "glcm_levels": 16, "glcm_distances": [1]}}
    slides = {f"S{i}": ("malignant" if i % 2 else "benign") for i in range(8)}
    features = []
    for i, (sid, label) in enumerate(slides.items()):
        colour = (100, 60, 150) if label == "malignant" else (220, 160, 200)
        table, store, status = _slide(tmp_path, sid, label, colour, seed=i)
        out = tmp_path / "features" / f"{sid}.parquet"
        df = extract_patch_features(table=table, store=store, status=status, output=out, baselines=config)
        assert len(df) == len(PatchStore(store)) and list(df.columns[:5]) == ["slide_id", "patch_index", "x", "y",
                                                                              "label"]
        features.append(str(out))
    roles = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    splits = tmp_path / "splits.csv"
    pd.DataFrame({"slide_id": list(slides), "fold": "0", "role": roles, "label": list(slides.values())}).to_csv(
        splits, index=False)
    patches = tmp_path / "pred" / "patches.parquet"
    fit_baseline(arm="handcrafted", fold="0", splits=splits, features=features, output=patches,
                 info_output=tmp_path / "pred" / "info.json", baselines=config, seed=1)
    table = pd.read_parquet(patches)
    assert list(table.columns) == ["slide_id", "patch_index", "x", "y", "role", "prob"]
    assert set(table["role"]) == {"val", "test"} and set(table["slide_id"]) == set(list(slides)[4:])
    truth = table["slide_id"].map(slides) == "malignant"
    assert table.loc[truth, "prob"].min() > table.loc[~truth, "prob"].max()  # colour separates them
    info = json.loads((tmp_path / "pred" / "info.json").read_text())
    assert info["n_train"] == 24 and info["n_train_slides"] == 4 and info["n_eval"] == 24
    aggregate_slides(patches=patches, splits=splits, fold="0", output=tmp_path / "pred" / "slides.csv",
                     theta_output=tmp_path / "pred" / "theta.json", aggregate={"theta": 0.5})
    calls = pd.read_csv(tmp_path / "pred" / "slides.csv")
    assert len(calls) == 4


def test_probe_arm_fits_on_training_embeddings_only(tmp_path):
    import pyarrow as pa

    from duvflow.core.io import write_parquet

    rng = np.random.default_rng(0)
    slides = {f"S{i}": ("malignant" if i % 2 else "benign") for i in range(6)}
    meta = pd.DataFrame([(s, i, i, 0, lab) for s, lab in slides.items() for i in range(5)],
                        columns=["slide_id", "patch_index", "x", "y", "label"])
    y = (meta["label"] == "malignant").to_numpy()
    emb = rng.normal(0, 1, (len(meta), 8)).astype(np.float32)
    emb[:, 0] += np.where(y, 3, -3)
    table = pa.Table.from_pandas(meta, preserve_index=False).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8))
    write_parquet(table, tmp_path / "emb.parquet")
    splits = tmp_path / "splits.csv"
    pd.DataFrame({"slide_id": list(slides), "fold": "0", "role": ["train"] * 4 + ["test"] * 2,
                  "label": list(slides.values())}).to_csv(splits, index=False)
    out = fit_baseline(arm="probe", fold="0", splits=splits, embeddings=str(tmp_path / "emb.parquet"),
                       output=tmp_path / "p.parquet", info_output=tmp_path / "i.json", baselines={}, seed=0)
    assert set(out["slide_id"]) == {"S4", "S5"} and (out["role"] == "test").all()
    scores = out.groupby("slide_id")["prob"].mean()
    assert scores["S5"] > 0.75 and scores["S4"] < 0.25
    with pytest.raises(ValueError, match="unknown baseline arm"):
        fit_baseline(arm="real", fold="0", splits=splits, output=tmp_path / "x.parquet",
                     info_output=tmp_path / "x.json", baselines={}, seed=0)


def test_config_section_matches_the_schema():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((root / "workflow/schemas/config.schema.yaml").read_text())["properties"]["baselines"]
    defaults = {k: v["default"] for k, v in schema["properties"].items() if k != "handcrafted"}
    defaults["handcrafted"] = {k: v["default"] for k, v in schema["properties"]["handcrafted"]["properties"].items()}
    assert from_dict(BaselineConfig, defaults, "baselines") == BaselineConfig()
    assert "probe" in yaml.safe_load((root / "config/config.yaml").read_text())["arms"]
