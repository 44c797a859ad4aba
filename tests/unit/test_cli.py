"""``duvflow predict`` on generated slides, the deployable model bundle, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from duvflow.classifier.deploy import export_model, resolve_theta
from duvflow.classifier.model import build_classifier
from duvflow.cli import main
from duvflow.core.io import write_json
from duvflow.train.checkpoint import save_weights

TILING = {"level": 0, "patch_size": 128, "patch_um": None, "default_mpp": None, "background": "auto",
          "min_tissue_fraction": 0.5, "thumbnail_max": 512, "on_bad_slide": "fail", "store_compression": "lzf"}
KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture
def model_dir(tmp_path):
    """A tiny fold-'all' classifier folder as train_classifier writes it (random weights)."""
    folder = tmp_path / "classifier" / "real" / "fold_all"
    model = build_classifier("vit_base_patch16_224", img_size=32, model_kwargs=KWARGS)
    save_weights(model.state_dict(), folder / "model.safetensors")
    write_json({"model": "vit_base_patch16_224", "model_kwargs": KWARGS, "img_size": 32, "arm": "real", "fold": "all",
                "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(), "tiling": TILING,
                "train_slides": ["x"]}, folder / "model.json")
    return folder


def test_predict_labels_a_generated_slide_and_reports_bad_ones(tmp_path, model_dir, demo_slide_factory, capsys):
    slide = demo_slide_factory("malignant", width=1024, height=1024, seed=0)
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00 not really a tiff")
    missing = tmp_path / "missing.svs"
    out = tmp_path / "pred"
    rc = main(["predict", str(slide), str(broken), str(missing), "--model", str(model_dir), "--out", str(out),
               "--theta", "0.3", "--threads", "1"])
    assert rc == 1  # some slides could not be labelled
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("path")
    good = table.loc[str(slide)]
    assert good["status"] == "ok" and good["n_patches"] > 0
    assert 0 <= float(good["score"]) <= 1 and good["theta"] == 0.3
    assert good["label"] == ("malignant" if float(good["score"]) > 0.3 else "benign")
    patches = pd.read_parquet(out / "patches" / f"{good['slide_id']}.parquet")
    assert len(patches) == good["n_patches"] and patches["prob"].between(0, 1).all()
    assert (patches["x"] % 128 == 0).all() and (patches["size_level0"] == 128).all()
    assert patches["prob"].mean() == pytest.approx(float(good["score"]), abs=1e-6)
    with Image.open(good["heatmap"]) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    bad = table.loc[str(broken)]
    assert bad["status"] == "error" and "broken.tiff" in bad["error"] and bad["label"] == ""
    assert table.loc[str(missing), "status"] == "error" and "does not exist" in table.loc[str(missing), "error"]
    err = capsys.readouterr().err  # the command logs to stderr
    assert "not labelled" in err and "missing.svs" in err
    assert not list((out / "tiles").iterdir())  # temporary tiles are cleaned up


def test_theta_comes_from_the_exported_model(tmp_path, model_dir, demo_slide_factory):
    theta_json = tmp_path / "theta.json"
    write_json({"theta": 1.0, "mode": "auto", "theta_fixed": 0.2, "theta_auto": 1.0}, theta_json)
    deploy = tmp_path / "deploy" / "real"
    info = export_model(weights=model_dir / "model.safetensors", meta=model_dir / "model.json", theta=theta_json,
                        output_weights=deploy / "model.safetensors", output_meta=deploy / "model.json")
    assert info["theta"] == 1.0 and info["theta_mode"] == "auto"
    assert (deploy / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    slide = demo_slide_factory("benign", width=768, height=768, seed=2)
    assert main(["predict", str(slide), "--model", str(deploy), "--out", str(tmp_path / "o1")]) == 0
    row = pd.read_csv(tmp_path / "o1" / "predictions.csv").iloc[0]
    assert row["theta"] == 1.0 and row["label"] == "benign"  # no score exceeds 1
    # an explicit --theta wins over the stored one
    assert main(["predict", str(slide), "--model", str(deploy), "--out", str(tmp_path / "o2"), "--theta", "0"]) == 0
    assert pd.read_csv(tmp_path / "o2" / "predictions.csv").iloc[0]["label"] == "malignant"


def test_theta_resolution_and_export_checks(tmp_path, model_dir):
    assert resolve_theta(None, {}) == (0.2, "default")
    assert resolve_theta(0.35, {"theta": 0.1})[0] == 0.35
    assert resolve_theta(None, {"theta": 0.1, "theta_mode": "auto"})[0] == 0.1
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        resolve_theta(2.0, {})
    meta = json.loads((model_dir / "model.json").read_text())
    meta["fold"] = "0"
    (tmp_path / "m0.json").write_text(json.dumps(meta))
    write_json({"theta": 0.2, "mode": "fixed", "theta_fixed": 0.2, "theta_auto": 0.3}, tmp_path / "t.json")
    with pytest.raises(ValueError, match="fold 'all'"):
        export_model(weights=model_dir / "model.safetensors", meta=tmp_path / "m0.json", theta=tmp_path / "t.json",
                     output_weights=tmp_path / "d" / "model.safetensors", output_meta=tmp_path / "d" / "model.json")


def test_missing_model_folder_is_a_clear_error(tmp_path, tiny_pyramid_tiff, capsys):
    rc = main(["predict", str(tiny_pyramid_tiff), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"model folder {tmp_path / 'nope'} does not exist" in err
    (tmp_path / "empty").mkdir()
    rc = main(["predict", str(tiny_pyramid_tiff), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not a duvflow classifier folder" in err and "model.safetensors" in err


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as err:
        main(["predict", "--out", "x"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["--version"])


def test_no_tissue_slide_is_reported(tmp_path, model_dir, tissue_free_tiff):
    rc = main(["predict", str(tissue_free_tiff), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert rc == 1
    row = pd.read_csv(tmp_path / "o" / "predictions.csv").iloc[0]
    assert row["status"] == "no_tissue" and np.isnan(row["score"])
