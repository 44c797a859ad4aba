"""Embedding tables (schema, coverage, roles, values), the initial-backbone baseline and the probes."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
from ssl_cohort import labels_for, make_cohort, tiny_dino

from duvflow.core.patches import resize_batch
from duvflow.core.splits import make_splits
from duvflow.ssl.embed import embed_initial, embed_patches, read_embeddings
from duvflow.ssl.model import load_teacher
from duvflow.ssl.probe import probe_embeddings, summarise_probes
from duvflow.ssl.train import train_dino


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 usable slides (one more without tissue), 2 folds, a fold-0 teacher."""
    root = tmp_path_factory.mktemp("embed")
    labels = {**labels_for(3, 3), "B99": "benign"}
    tables, stores, statuses = make_cohort(root, labels, n_patches=20, size=32, seed=2,
                                           statuses={"B99": "no_tissue"}, sizes={"M02": 40})
    make_splits(statuses=statuses, labels=labels, output=root / "splits.csv",
                splits={"n_folds": 2, "val_fraction": 0.34}, seed=4)
    torch.set_num_threads(1)
    train_dino(tables=tables, stores=stores, statuses=statuses, splits=str(root / "splits.csv"), fold="0",
               teacher=root / "teacher.safetensors", teacher_config=root / "teacher.json", metrics=root / "m.csv",
               dino=tiny_dino(epochs=2), seed=1, checkpoint_dir=root / "ckpt", num_workers=0)
    return root, tables, stores, statuses


def _embed(trained, out, **kw):
    root, tables, stores, statuses = trained
    embed_patches(tables=tables, stores=stores, statuses=statuses, splits=str(root / "splits.csv"), fold="0",
                  teacher=root / "teacher.safetensors", teacher_config=root / "teacher.json", output=out,
                  embed={"batch_size": 16, **kw}, num_workers=1)


def test_embedding_parquet_schema_coverage_and_roles(trained, tmp_path):
    root, tables, *_ = trained
    out = tmp_path / "fold_0.parquet"
    _embed(trained, out)
    schema = pq.read_schema(out)
    assert schema.names == ["slide_id", "patch_index", "x", "y", "label", "role", "embedding"]
    emb_type = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.value_type == pa.float32() and emb_type.list_size == 32
    meta, x = read_embeddings(out)
    assert x.shape == (6 * 20, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    # every patch of every usable slide, once; the tissue-free slide is absent
    expected = pd.concat([pd.read_parquet(t) for t in tables])
    expected = expected[expected["slide_id"] != "B99"]
    assert sorted(zip(meta["slide_id"], meta["patch_index"], strict=True)) == sorted(
        zip(expected["slide_id"], expected["patch_index"], strict=True))
    # roles are the fold's, test slides included (embedded by this fold's teacher)
    splits = pd.read_csv(root / "splits.csv", dtype=str)
    roles = splits[splits["fold"] == "0"].set_index("slide_id")["role"]
    assert (meta["role"] == meta["slide_id"].map(roles)).all()
    assert {"train", "test"} <= set(meta["role"])
    assert (meta["label"] == np.where(meta["slide_id"].str.startswith("B"), "benign", "malignant")).all()
    assert pq.read_metadata(out).metadata[b"fold"] == b"0"


def test_embeddings_equal_the_teacher_applied_directly(trained, tmp_path):
    root = trained[0]
    out = tmp_path / "e.parquet"
    _embed(trained, out, mixed_precision=False)
    meta, x = read_embeddings(out)
    model, info = load_teacher(root / "teacher.safetensors")
    from duvflow.slides.store import PatchStore

    # M02 has 40-px patches (resized to 32): its patch 3 shares a batch with M01, patch 15 does not
    for sid, i in [("B00", 0), ("M01", 7), ("M02", 3), ("M02", 15)]:
        patch = PatchStore(root / "tiles" / f"{sid}.h5")[i]
        img = torch.from_numpy(patch).permute(2, 0, 1).float()[None] / 255
        img = resize_batch(img, info["img_size"])
        with torch.no_grad():
            direct = model(img)[0].numpy()
        row = np.flatnonzero(((meta["slide_id"] == sid) & (meta["patch_index"] == i)).to_numpy())[0]
        np.testing.assert_allclose(x[row], direct, rtol=1e-4, atol=1e-5)


def test_initial_embedding_uses_the_configured_local_weights(trained, tmp_path):
    root, tables, stores, statuses = trained
    cfg = tiny_dino()
    source = timm.create_model(cfg["backbone"], num_classes=0, img_size=cfg["img_size"], **cfg["model_kwargs"])
    torch.nn.init.normal_(source.cls_token, std=0.5)
    weights = tmp_path / "pretrained.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, weights)
    out = tmp_path / "initial.parquet"
    embed_initial(tables=tables, stores=stores, statuses=statuses, output=out, dino={**cfg, "init": "pretrained", "weights": str(weights)},
                  embed={"batch_size": 32, "mixed_precision": False}, seed=1, num_workers=0)
    meta, x = read_embeddings(out)
    assert "role" not in meta and len(meta) == 120
    from duvflow.slides.store import PatchStore

    patch = PatchStore(root / "tiles" / "B01.h5")[2]
    img = (torch.from_numpy(patch).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5  # the model's mean/std
    with torch.no_grad():
        direct = source.eval()(img)[0].numpy()
    row = np.flatnonzero(((meta["slide_id"] == "B01") & (meta["patch_index"] == 2)).to_numpy())[0]
    np.testing.assert_allclose(x[row], direct, rtol=1e-4, atol=1e-5)


def test_probe_reports_before_and_after(trained, tmp_path, caplog):
    root, tables, stores, statuses = trained
    _embed(trained, tmp_path / "fold_0.parquet")
    embed_initial(tables=tables, stores=stores, statuses=statuses, output=tmp_path / "initial.parquet",
                  dino=tiny_dino(), embed={"batch_size": 32}, seed=1, num_workers=0)
    with caplog.at_level("INFO"):
        result = probe_embeddings(embeddings=tmp_path / "fold_0.parquet", initial=tmp_path / "initial.parquet",
                                  fold="0", output=tmp_path / "probe.json", plot=tmp_path / "projection.png",
                                  probe={"knn_k": 5, "max_points": 200}, seed=0)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved == json.loads(json.dumps(result))
    splits = pd.read_csv(root / "splits.csv", dtype=str)
    f0 = splits[splits["fold"] == "0"]
    assert saved["eval_role"] == "val" and saved["n_eval_slides"] == (f0["role"] == "val").sum()
    assert saved["n_train"] == 20 * (f0["role"] == "train").sum()
    for backbone in ("initial", "finetuned"):
        for probe in ("logreg", "knn"):
            m = saved[backbone][probe]
            assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["slide_accuracy"] <= 1.0
    assert set(saved["delta"]) == {"logreg", "knn"}
    assert any("probe fold 0" in r.message and "initial" in r.message for r in caplog.records)
    assert (tmp_path / "projection.png").stat().st_size > 10_000
    table = summarise_probes(probes=[tmp_path / "probe.json"], table=tmp_path / "summary.tsv",
                             plot=tmp_path / "summary.png")
    assert len(table) == 4 and set(table["backbone"]) == {"initial", "finetuned"}
    assert (tmp_path / "summary.png").exists()


def test_probe_separates_labels_on_separable_embeddings(tmp_path):
    # embeddings where the label is one coordinate: the probe must find it; the "initial" ones are noise
    from duvflow.core.io import write_parquet
    from duvflow.ssl.embed import embedding_table

    rng = np.random.default_rng(0)
    rows = []
    for s, (sid, label, role) in enumerate([("A", "benign", "train"), ("B", "malignant", "train"),
                                            ("C", "benign", "val"), ("D", "malignant", "val")]):
        for i in range(30):
            rows.append((sid, i, i, s, label, role))
    meta = pd.DataFrame(rows, columns=["slide_id", "patch_index", "x", "y", "label", "role"])
    y = (meta["label"] == "malignant").to_numpy()
    good = rng.normal(size=(len(meta), 8)).astype(np.float32)
    good[:, 0] += np.where(y, 3.0, -3.0)
    noise = rng.normal(size=(len(meta), 8)).astype(np.float32)
    write_parquet(embedding_table(meta, good), tmp_path / "ft.parquet")
    write_parquet(embedding_table(meta.drop(columns="role"), noise), tmp_path / "init.parquet")
    r = probe_embeddings(embeddings=tmp_path / "ft.parquet", initial=tmp_path / "init.parquet", fold="0",
                         output=tmp_path / "p.json", plot=tmp_path / "p.png", probe={"knn_k": 5}, seed=0)
    assert r["finetuned"]["logreg"]["auc"] > 0.99 and r["finetuned"]["knn"]["accuracy"] > 0.95
    assert r["finetuned"]["logreg"]["slide_accuracy"] == 1.0
    assert abs(r["initial"]["logreg"]["auc"] - 0.5) < 0.25
    assert r["delta"]["logreg"]["auc"] > 0.2
