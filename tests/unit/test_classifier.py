"""Classifier micro-training, model selection, resume, reload, prediction and leakage checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from duvflow.classifier import load_classifier, predict_tiles, train_classifier
from duvflow.classifier.config import ClassifierConfig
from duvflow.classifier.data import LeakageError, PatchImages, augment, check_no_leakage, epoch_batches
from duvflow.classifier.train import _validate
from duvflow.core.config import from_dict
from duvflow.core.io import write_json
from duvflow.core.runtime import select_device
from duvflow.slides.store import PatchStoreWriter

PATCH = 40
TINY = {
    "model": "vit_base_patch16_224",
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
    "img_size": 32, "epochs": 4, "batch_size": 16, "lr": 2e-3, "min_lr": 1e-4, "warmup_epochs": 0.5,
    "label_smoothing": 0.0, "eval_batch_size": 64, "num_workers": 0, "checkpoint_every": 2, "mixed_precision": False,
    "device": "cpu",
}
# fold 0: test te_b, te_m; val v_b, v_m; the rest train
ROLES = {"tr_b1": "train", "tr_b2": "train", "tr_m1": "train", "tr_m2": "train", "v_b": "val", "v_m": "val",
         "te_b": "test", "te_m": "test"}


def _patch(label: str, rng: np.random.Generator, size: int = PATCH) -> np.ndarray:
    """Benign: bluish; malignant: reddish with bright dots (an easy, learnable difference)."""
    base = np.array([70, 90, 170] if label == "benign" else [170, 70, 90], dtype=float)
    img = base + rng.normal(0, 25, (size, size, 3))
    if label == "malignant":
        ys, xs = rng.integers(0, size, (2, 12))
        img[ys, xs] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def cohort(tmp_path):
    """Tile tables, packed stores and statuses of 8 tiny slides, and a splits table with folds 0 and all."""
    rng = np.random.default_rng(0)
    tables, stores, statuses = [], [], []
    for sid in ROLES:
        label = "malignant" if "_m" in sid else "benign"
        n = 12
        table = pd.DataFrame({"slide_id": sid, "patch_index": np.arange(n), "x": np.arange(n) * PATCH * 2, "y": 0,
                              "level": 0, "size": PATCH, "size_level0": PATCH, "tissue_fraction": 1.0, "label": label})
        with PatchStoreWriter(tmp_path / f"{sid}.h5", n, PATCH, attrs={"slide_id": sid}) as w:
            for i in range(n):
                w.write(i, _patch(label, rng), (int(table.x[i]), 0))
        table.to_parquet(tmp_path / f"{sid}.parquet")
        write_json({"slide_id": sid, "status": "ok", "n_patches": n}, tmp_path / f"{sid}.json")
        tables.append(str(tmp_path / f"{sid}.parquet"))
        stores.append(str(tmp_path / f"{sid}.h5"))
        statuses.append(str(tmp_path / f"{sid}.json"))
    rows = [(s, "malignant" if "_m" in s else "benign", "0", r) for s, r in ROLES.items()]
    rows += [(s, lab, "all", "val" if r == "val" else "train") for s, lab, _, r in rows]
    pd.DataFrame(rows, columns=["slide_id", "label", "fold", "role"]).to_csv(tmp_path / "splits.csv", index=False)
    return {"tables": tables, "stores": stores, "statuses": statuses, "splits": str(tmp_path / "splits.csv"),
            "root": tmp_path}


def _synthetic(folder, sources, rng, size=48):
    folder.mkdir(parents=True)
    rows = []
    for j, src in enumerate(sources):
        label = "malignant" if "_m" in src else "benign"
        Image.fromarray(_patch(label, rng, size)).save(folder / f"{j:05d}.png")
        rows.append({"file": f"{j:05d}.png", "label": label, "source_slide": src, "source_patch": 0, "seed": j,
                     "guidance": 2.0, "steps": 5})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder


def _train(cohort, out, fold="0", config=TINY, **kw):
    out.mkdir(parents=True, exist_ok=True)
    return train_classifier(tables=cohort["tables"], stores=cohort["stores"], statuses=cohort["statuses"],
                            splits=cohort["splits"], fold=fold, arm=kw.pop("arm", "real"),
                            model_output=out / "model.safetensors", meta_output=out / "model.json",
                            metrics_output=out / "metrics.csv", checkpoint_dir=str(out) + ".ckpt", classifier=config,
                            seed=11, threads=1, **kw)


def test_micro_training_learns_and_the_saved_model_reproduces_its_selection(cohort):
    out = cohort["root"] / "clf" / "fold_0"
    meta = _train(cohort, out, tiling={"patch_size": PATCH})
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == TINY["epochs"]
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert metrics["selected"].sum() >= 1 and metrics["lr"].iloc[-1] < TINY["lr"]
    assert set(meta["train_slides"]) == {"tr_b1", "tr_b2", "tr_m1", "tr_m2"}
    assert set(meta["val_slides"]) == {"v_b", "v_m"}
    assert not {"te_b", "te_m"} & set(meta["train_slides"] + meta["val_slides"])
    assert meta["tiling"] == {"patch_size": PATCH} and meta["n_train_real"] == 48
    assert json.loads((out / "model.json").read_text())["selected_epoch"] == meta["selected_epoch"]
    assert not list((out.parent / "fold_0.ckpt").glob("checkpoint-*"))  # cleared after the final save

    # the saved weights are the selected epoch's: its validation numbers come back exactly
    model, loaded = load_classifier(out)
    cfg = from_dict(ClassifierConfig, TINY)
    from duvflow.core.patches import attach_split, load_patch_index

    index = attach_split(load_patch_index(cohort["tables"], cohort["stores"], cohort["statuses"]), cohort["splits"], "0")
    val = index[index["role"] == "val"].reset_index(drop=True)
    again = _validate(model, val, PatchImages(val, None, loaded["img_size"]), cfg, select_device("cpu"))
    assert again["val_patch_loss"] == pytest.approx(meta["selection"]["val_patch_loss"], rel=1e-5)
    assert again["val_slide_auc"] == pytest.approx(meta["selection"]["val_slide_auc"], nan_ok=True)
    assert again["val_slide_auc"] == 1.0  # the colours separate the classes

    # predict_tiles covers val and test slides only and yields sensible probabilities
    pred_path = cohort["root"] / "patches.parquet"
    pred = predict_tiles(model_dir=out, tables=cohort["tables"], stores=cohort["stores"], statuses=cohort["statuses"],
                         splits=cohort["splits"], fold="0", output=pred_path, classifier=TINY, threads=1)
    assert set(pred["slide_id"]) == {"v_b", "v_m", "te_b", "te_m"}
    assert set(pd.read_parquet(pred_path).columns) == {"slide_id", "patch_index", "x", "y", "role", "prob"}
    by_slide = pred.groupby("slide_id")["prob"].mean()
    assert by_slide["te_m"] > by_slide["te_b"]
    # and a second prediction run gives identical numbers (reload is deterministic)
    pred2 = predict_tiles(model_dir=out, tables=cohort["tables"], stores=cohort["stores"],
                          statuses=cohort["statuses"], splits=cohort["splits"], fold="0",
                          output=cohort["root"] / "p2.parquet", classifier=TINY, threads=1)
    np.testing.assert_array_equal(pred["prob"].to_numpy(), pred2["prob"].to_numpy())
    with pytest.raises(ValueError, match="fold 0, not fold all"):
        predict_tiles(model_dir=out, tables=cohort["tables"], stores=cohort["stores"], statuses=cohort["statuses"],
                      splits=cohort["splits"], fold="all", output=cohort["root"] / "p3.parquet", classifier=TINY)


def test_resumed_training_equals_an_uninterrupted_run(cohort, monkeypatch, caplog):
    cfg = {**TINY, "epochs": 2}
    full = cohort["root"] / "full"
    _train(cohort, full, config=cfg)

    import duvflow.train.harness as train_mod

    class Interrupt(Exception):
        pass

    class DyingManager(train_mod.CheckpointManager):
        def save(self, step, state):
            path = super().save(step, state)
            if step == 4:  # mid-way through the second epoch (3 steps per epoch)
                raise Interrupt
            return path

    part = cohort["root"] / "part"
    monkeypatch.setattr(train_mod, "CheckpointManager", DyingManager)
    with pytest.raises(Interrupt):
        _train(cohort, part, config=cfg)
    assert not (part / "model.safetensors").exists()
    assert [p.name for p in sorted((cohort["root"] / "part.ckpt").iterdir())] == ["checkpoint-00000003.pt",
                                                                                  "checkpoint-00000004.pt"]
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="duvflow.train.checkpoint"):
        _train(cohort, part, config=cfg)
    assert "resuming from" in caplog.text and "(step 4)" in caplog.text
    from duvflow.train.checkpoint import load_weights

    a, b = load_weights(full / "model.safetensors"), load_weights(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(full / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(part / "metrics.csv").drop(columns="seconds"))


def test_synthetic_arm_uses_the_synthetic_set_and_refuses_test_sources(cohort):
    rng = np.random.default_rng(5)
    good = _synthetic(cohort["root"] / "synthetic" / "ssl" / "fold_0", ["tr_b1", "tr_m2"] * 4, rng)
    meta = _train(cohort, cohort["root"] / "ssl", arm="real+ssl", synthetic=good, config={**TINY, "epochs": 1})
    assert meta["n_train_synthetic"] == 8 and meta["arm"] == "real+ssl"
    assert meta["class_counts"] == {"benign": 28, "malignant": 28}

    bad = _synthetic(cohort["root"] / "synthetic" / "bad" / "fold_0", ["tr_b1", "te_m"], rng)
    with pytest.raises(LeakageError, match="te_m"):
        _train(cohort, cohort["root"] / "bad", arm="real+bad", synthetic=bad, config={**TINY, "epochs": 1})
    assert not (cohort["root"] / "bad" / "model.safetensors").exists()


def test_leakage_checks(cohort):
    split = pd.read_csv(cohort["splits"], dtype=str)
    check_no_leakage(split, "0", ["tr_b1"], ["v_b"], None)
    with pytest.raises(LeakageError, match="te_b"):
        check_no_leakage(split, "0", ["tr_b1", "te_b"], ["v_b"], None)
    with pytest.raises(LeakageError, match="te_m"):
        check_no_leakage(split, "0", ["tr_b1"], ["te_m"], None)
    with pytest.raises(LeakageError, match="not training slides"):
        check_no_leakage(split, "0", ["v_m"], [], None)
    synth = pd.DataFrame({"source_slide": ["zz"]})
    with pytest.raises(LeakageError, match="outside"):
        check_no_leakage(split, "0", ["tr_b1"], [], synth)
    # every fold of a real split table: no test slide trains (real splits made by duvflow.core.splits)
    from duvflow.core.splits import SplitsConfig, assign_folds

    labels = {f"s{i}": "malignant" if i % 2 else "benign" for i in range(10)}
    table = assign_folds(labels, SplitsConfig(n_folds=3, val_fraction=0.2), seed=0)
    for fold in ["0", "1", "2", "all"]:
        part = table[table["fold"] == fold]
        check_no_leakage(table, fold, part.loc[part["role"] == "train", "slide_id"],
                         part.loc[part["role"] == "val", "slide_id"], None)
        assert not set(part.loc[part["role"] == "test", "slide_id"]) & set(part.loc[part["role"] != "test", "slide_id"])


def test_prediction_refuses_a_model_trained_on_a_test_slide(cohort):
    out = cohort["root"] / "m"
    _train(cohort, out, config={**TINY, "epochs": 1})
    meta = json.loads((out / "model.json").read_text())
    meta["train_slides"].append("te_b")
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(LeakageError, match="te_b"):
        predict_tiles(model_dir=out, tables=cohort["tables"], stores=cohort["stores"], statuses=cohort["statuses"],
                      splits=cohort["splits"], fold="0", output=cohort["root"] / "p.parquet", classifier=TINY)


def test_epoch_batches_are_deterministic_and_balanced():
    labels = np.array([0] * 90 + [1] * 10)
    a = epoch_batches(labels, 20, seed=1, epoch=3, balance=True)
    assert a == epoch_batches(labels, 20, seed=1, epoch=3, balance=True)
    assert a != epoch_batches(labels, 20, seed=1, epoch=4, balance=True)
    drawn = np.array([i for batch in a for i, _ in batch])
    assert len(a) == 5 and 0.3 < labels[drawn].mean() < 0.7  # balanced sampling: about half malignant
    plain = epoch_batches(labels, 20, seed=1, epoch=0, balance=False)
    assert sorted(i for b in plain for i, _ in b) == list(range(100))
    assert len(epoch_batches(labels[:5], 20, seed=1, epoch=0, balance=False)[0]) == 5


def test_augment_is_reproducible_and_keeps_range():
    from duvflow.classifier.config import ClassifierAugmentConfig as AugmentConfig

    img = torch.rand(3, 16, 16)
    cfg = AugmentConfig()
    a = augment(img, cfg, torch.Generator().manual_seed(3))
    b = augment(img, cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 1
    off = AugmentConfig(hflip=False, vflip=False, rot90=False, brightness=0, contrast=0, saturation=0, hue=0)
    torch.testing.assert_close(augment(img, off, torch.Generator().manual_seed(0)), img)


def test_config_rejects_unknown_keys_and_values():
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(ClassifierConfig, {"lr": 1e-4, "learning_rate": 1}, "classifier")
    with pytest.raises(ValueError, match="balance"):
        ClassifierConfig(balance="oversample")


def test_synthetic_set_errors_name_the_problem(tmp_path):
    from duvflow.classifier.data import load_synthetic

    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        load_synthetic(tmp_path)
    folder = _synthetic(tmp_path / "s", ["tr_b1", "tr_m1"], np.random.default_rng(0))
    (folder / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00001.png"):
        load_synthetic(folder)
    pd.DataFrame({"file": ["00000.png"], "label": ["benign"]}).to_parquet(folder / "manifest.parquet")
    with pytest.raises(ValueError, match="source_slide"):
        load_synthetic(folder)


def test_preloaded_images_equal_streamed_ones(cohort):
    from duvflow.classifier.config import ClassifierAugmentConfig as AugmentConfig
    from duvflow.core.patches import load_patch_index

    index = load_patch_index(cohort["tables"][:2], cohort["stores"][:2], cohort["statuses"][:2])
    synth = _synthetic(cohort["root"] / "syn", ["tr_b1", "tr_m1"], np.random.default_rng(1))
    from duvflow.classifier.data import load_synthetic

    streamed = PatchImages(index, load_synthetic(synth), 32, AugmentConfig())
    cached = PatchImages(index, load_synthetic(synth), 32, AugmentConfig()).preload()
    assert len(streamed) == len(cached) == 26
    for key in [0, 5, 24, 25, (3, 77), (25, 5)]:
        a, la = streamed[key]
        b, lb = cached[key]
        assert la == lb and a.shape == (3, 32, 32)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_layer_decay_scales_lr_by_depth_and_spares_embeddings_from_weight_decay():
    """layer_decay: the head keeps the step's lr, each layer below it gets `decay` times the one above;
    without it one rate for all. Either way pos_embed/cls_token/biases/norms get no weight decay."""
    from duvflow.classifier.model import build_classifier
    from duvflow.classifier.train import build_optimizer, set_lr

    kwargs = {**TINY["model_kwargs"], "depth": 2}
    model = build_classifier(TINY["model"], img_size=TINY["img_size"], model_kwargs=kwargs)
    names = {id(p): n for n, p in model.backbone.named_parameters()}

    def rates(decay):
        cfg = from_dict(ClassifierConfig, {**TINY, "layer_decay": decay}, "classifier")
        optimizer = build_optimizer(model, cfg)
        set_lr(optimizer, 1e-3)
        n_params = sum(len(g["params"]) for g in optimizer.param_groups)
        assert n_params == len(list(model.parameters()))  # every parameter, each once
        out = {}
        for g in optimizer.param_groups:
            for p in g["params"]:
                out[names[id(p)]] = (g["lr"], g["weight_decay"])
        return out

    flat = rates(None)
    assert all(lr == pytest.approx(1e-3) for lr, _ in flat.values())
    decayed = rates(0.5)
    assert decayed["head.weight"][0] == pytest.approx(1e-3)
    assert decayed["blocks.1.attn.qkv.weight"][0] == pytest.approx(0.5e-3)
    assert decayed["blocks.0.attn.qkv.weight"][0] == pytest.approx(0.25e-3)
    assert decayed["patch_embed.proj.weight"][0] == pytest.approx(0.125e-3)
    for table in (flat, decayed):
        assert table["pos_embed"][1] == 0 and table["cls_token"][1] == 0 and table["norm.weight"][1] == 0
        assert table["blocks.0.attn.qkv.weight"][1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="layer_decay"):
        from_dict(ClassifierConfig, {"layer_decay": 1.5}, "classifier")
