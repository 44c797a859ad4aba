"""DINO pieces against hand-computed values, and short real training runs on a tiny patch cohort."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from ssl_cohort import labels_for, make_cohort, tiny_dino

from duvflow.core.splits import make_splits
from duvflow.ssl.augment import MultiCropAugment, random_resized_boxes
from duvflow.ssl.config import CropConfig
from duvflow.ssl.config import DinoAugmentConfig as AugmentConfig
from duvflow.ssl.head import DINOHead
from duvflow.ssl.loss import DINOLoss
from duvflow.ssl.model import load_teacher
from duvflow.ssl.train import CollapseMonitor, ema_update, train_dino
from duvflow.train.schedules import cosine_schedule, cosine_value, warmup_constant_schedule


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------- loss, head, EMA, schedules


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_dino_loss_matches_hand_computation():
    # B = 1, K = 3 prototypes, 2 global + 1 local student views
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0]])
    t = np.array([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1]])
    center = np.array([0.05, 0.1, 0.0])
    loss_fn = DINOLoss(3, n_global=2, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor(center[None]))
    loss, stats = loss_fn(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), teacher_temp=0.04)

    q = [_softmax((t[i] - center) / 0.04) for i in range(2)]
    logp = [np.log(_softmax(s[v] / 0.1)) for v in range(3)]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view); (0, 0) and (1, 1) excluded
    expected = np.mean([-(q[i] * logp[v]).sum() for i, v in pairs])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    ent = np.mean([-(qi * np.log(qi)).sum() for qi in q])
    assert stats.teacher_entropy.item() == pytest.approx(ent, rel=1e-4)
    kl = np.mean([(q[i] * (np.log(q[i]) - logp[v])).sum() for i, v in pairs])
    assert stats.kl.item() == pytest.approx(kl, rel=1e-4, abs=1e-6)
    # centre: EMA of the teacher's batch mean, updated after the loss used the old centre
    np.testing.assert_allclose(loss_fn.center.numpy()[0], 0.9 * center + 0.1 * t.mean(0), rtol=1e-6)


def test_dino_loss_ignores_same_view_pairs_and_sharper_teacher_changes_targets():
    loss_fn = DINOLoss(4, n_global=2)
    t = torch.randn(2 * 3, 4)
    s = torch.randn(2 * 3, 4)
    base, _ = loss_fn(s, t, 0.04, update_center=False)
    # a student's global view i is only compared with the *other* teacher view: swapping the
    # student's two global views changes the pairs (0,1),(1,0) but not the local ones
    s_same = s.clone()
    s_same[0:3], s_same[3:6] = s[3:6], s[0:3]
    swapped, _ = loss_fn(s_same, t, 0.04, update_center=False)
    assert not torch.isclose(base, swapped)
    # teacher output equal for its two views and student matching it exactly on the global views:
    # with only global views the loss is the cross-entropy of q with itself at student temp
    t2 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    s2 = t2 * 0.1 / 0.04
    loss2, stats2 = DINOLoss(4, n_global=2)(s2, t2, 0.04, update_center=False)
    assert loss2.item() == pytest.approx(stats2.teacher_entropy.item(), rel=1e-5)
    assert stats2.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_dino_head_hand_computed_and_weight_normalised():
    head = DINOHead(in_dim=2, out_dim=3, hidden_dim=4, bottleneck_dim=2, n_layers=1, norm_last_layer=True)
    with torch.no_grad():
        head.mlp.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        head.mlp.bias.copy_(torch.tensor([0.0, 1.0]))
        head.last_layer.parametrizations.weight.original1.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0]])
    h = np.array([3.0, 8.0])
    h = h / np.linalg.norm(h)
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    np.testing.assert_allclose(head(x).detach().numpy()[0], w @ h, rtol=1e-6)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    free = DINOHead(8, 16, 32, 4, n_layers=3, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert free(torch.randn(5, 8)).shape == (5, 16)


def test_ema_update():
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0 = [p.detach().clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for p_t, p0, p_s in zip(t.parameters(), t0, s.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p_s.detach())
    ema_update(t, s, 1.0)  # momentum 1: the teacher is frozen
    for p_t, p0, p_s in zip(t.parameters(), t0, s.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p_s.detach())


def test_schedules_at_known_steps():
    lr = cosine_schedule(1.0, 0.0, total_steps=110, warmup_steps=10)
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert lr[-1] == pytest.approx(0.0, abs=1e-12)
    # cosine half-way between step 10 and 109
    assert cosine_value(10 + 99 / 2, 110, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert np.all(np.diff(lr[10:]) <= 1e-12)
    mom = cosine_schedule(0.996, 1.0, total_steps=5)
    np.testing.assert_allclose(mom, [0.996, 0.996 + 0.004 * (1 - math.cos(math.pi / 4)) / 2, 0.998,
                                     0.996 + 0.004 * (1 - math.cos(3 * math.pi / 4)) / 2, 1.0])
    temp = warmup_constant_schedule(0.04, 0.07, total_steps=6, warmup_steps=4)
    np.testing.assert_allclose(temp, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])


# ---------------------------------------------------------------- augmentation


def test_multicrop_shapes_ranges_and_determinism():
    aug = MultiCropAugment(24, CropConfig(n_local=3, local_size=12), AugmentConfig())
    x = torch.rand(5, 3, 40, 40)
    views = aug(x, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 24, 24)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in views)
    again = aug(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    other = aug(x, torch.Generator().manual_seed(1))
    assert not torch.equal(views[0], other[0])


def test_crop_boxes_stay_inside_each_images_valid_area():
    sizes = torch.tensor([[40, 40], [20, 30], [40, 10]])
    boxes = random_resized_boxes(sizes.repeat(50, 1), (0.05, 1.0), torch.Generator().manual_seed(0))
    h, w = sizes.repeat(50, 1).float().unbind(1)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w + 1e-4).all() and (boxes[:, 3] <= h + 1e-4).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (h * w)
    assert (area <= 1 + 1e-4).all() and (area >= 0.04).all()


def test_identity_augmentation_is_a_plain_resize():
    off = AugmentConfig(hflip_p=0, vflip_p=0, rot90=False, jitter_p=0, grayscale_p=0, blur_p_global=(0, 0),
                        blur_p_local=0, solarize_p=0)
    aug = MultiCropAugment(16, CropConfig(n_local=0, global_scale=(1.0, 1.0)), off)
    x = torch.rand(3, 3, 16, 16)
    views = aug(x, torch.Generator().manual_seed(0))
    # full-area square crop of a square image at its own size: the image itself
    torch.testing.assert_close(views[0], x, atol=1e-5, rtol=0)
    # hue rotation by 0 is the identity; by a full turn too
    torch.testing.assert_close(MultiCropAugment._hue(x, torch.zeros(3)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(MultiCropAugment._hue(x, torch.ones(3)), x, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    labels = labels_for(3, 3)
    tables, stores, statuses = make_cohort(root, labels, n_patches=24, size=32, seed=0)
    make_splits(statuses=statuses, labels=labels, output=root / "splits.csv", splits={"n_folds": 2}, seed=1)
    return root, tables, stores, statuses


def _train(cohort, out, fold="0", dino=None, **kwargs):
    root, tables, stores, statuses = cohort
    kwargs.setdefault("num_workers", 0)
    return train_dino(tables=tables, stores=stores, statuses=statuses, splits=str(root / "splits.csv"), fold=fold,
                      teacher=out / "teacher.safetensors", teacher_config=out / "teacher.json",
                      metrics=out / "metrics.csv", plot=out / "metrics.png", dino=dino or tiny_dino(), seed=1,
                      checkpoint_dir=out / "ckpt", **kwargs)


def test_student_loss_goes_down_on_fixed_targets(cohort, tmp_path):
    # With the teacher and centre frozen (momentum 1) DINO is plain distillation to fixed targets:
    # the student's loss must fall. (With a moving teacher the DINO loss of a random-init network
    # first rises as centring spreads the teacher, so it is no learning check on its own.)
    cfg = tiny_dino(momentum_teacher=1.0, center_momentum=1.0, lr=0.003, epochs=5,
                    head={"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 64})
    _train(cohort, tmp_path, dino=cfg)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert len(m) == 5 * (48 // 8)  # 48 training patches (2 slides x 24) in batches of 8
    assert m["loss"].tail(6).mean() < 0.92 * m["loss"].head(3).mean()
    assert m["kl"].tail(6).mean() < 0.6 * m["kl"].head(3).mean()
    assert np.isfinite(m.to_numpy(dtype=float)).all()
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_training_outputs_reload_to_identical_embeddings(cohort, tmp_path):
    meta = _train(cohort, tmp_path)
    _, saved = load_teacher(tmp_path / "teacher.safetensors", tmp_path / "teacher.json")
    assert saved["fingerprint"] == meta["fingerprint"] and len(meta["fingerprint"]) == 32
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m.columns[:6]) == ["step", "epoch", "loss", "teacher_entropy", "kl", "embed_std"]
    assert {"lr", "momentum"} <= set(m.columns)
    assert m["momentum"].iloc[0] == pytest.approx(0.996) and m["momentum"].iloc[-1] == pytest.approx(1.0)
    # the saved file is a plain timm state dict (no head), loadable by create_backbone
    state = load_file(tmp_path / "teacher.safetensors")
    assert "cls_token" in state and not any(k.startswith("head") or "last_layer" in k for k in state)
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
    # a teacher.json that no longer describes the weights is refused
    import json

    bad = dict(saved, mean=[0.2, 0.2, 0.2])  # loads fine, but normalises differently
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not reproduce"):
        load_teacher(tmp_path / "teacher.safetensors", tmp_path / "bad.json")


def test_resume_after_interruption_matches_uninterrupted_run(cohort, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(cohort, full)
    # killed after step 4: the newest checkpoint is step 3, so step 4 is redone on resume
    assert _train(cohort, cut, stop_after=4) is None
    assert not (cut / "teacher.safetensors").exists()
    assert [p.name for p in (cut / "ckpt").iterdir()] == ["checkpoint-00000003.pt"]
    _train(cohort, cut)
    a, b = load_file(full / "teacher.safetensors"), load_file(cut / "teacher.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ma, mb = pd.read_csv(full / "metrics.csv"), pd.read_csv(cut / "metrics.csv")
    assert list(mb["step"]) == list(range(18))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def test_changed_config_does_not_resume_a_foreign_checkpoint(cohort, tmp_path):
    _train(cohort, tmp_path, stop_after=3)
    meta = _train(cohort, tmp_path, dino=tiny_dino(lr=0.001))
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m["lr"].max() < 0.001 * 8 / 256 + 1e-12 and meta["steps"] == len(m)


def test_training_reads_only_the_folds_training_slides(cohort, tmp_path):
    root, tables, stores, statuses = cohort
    splits = pd.read_csv(root / "splits.csv", dtype=str)
    fold = splits[splits["fold"] == "1"]
    train_ids = set(fold.loc[fold["role"] == "train", "slide_id"])
    # the stores of every non-training slide point nowhere: reading one would fail
    hidden = [s if any(f"/{sid}.h5" in s for sid in train_ids) else str(tmp_path / "missing.h5") for s in stores]
    meta = train_dino(tables=tables, stores=hidden, statuses=statuses, splits=str(root / "splits.csv"), fold="1",
                      teacher=tmp_path / "t.safetensors", teacher_config=tmp_path / "t.json",
                      metrics=tmp_path / "m.csv", dino=tiny_dino(epochs=1), seed=1, checkpoint_dir=tmp_path / "c",
                      num_workers=1)
    assert set(meta["train_slides"]) == train_ids
    assert not train_ids & set(fold.loc[fold["role"] == "test", "slide_id"])


def test_collapse_monitor_warns_once(caplog):
    mon = CollapseMonitor(out_dim=64, min_std=0.05, start_step=2, smoothing=0.0)
    with caplog.at_level("WARNING"):
        for step in range(6):
            mon.update(step, embed_std=0.001, entropy=math.log(64), kl=1e-6)
    assert mon.warned == ["embeddings", "uniform"]
    assert sum("COLLAPSE" in r.message for r in caplog.records) == 2
    weak = CollapseMonitor(out_dim=64, min_std=0.05, start_step=0, smoothing=0.0)
    weak.update(3, embed_std=0.3, entropy=0.995 * math.log(64), kl=0.1)
    assert weak.warned == ["near-uniform"]
    healthy = CollapseMonitor(out_dim=64, min_std=0.05, start_step=0, smoothing=0.0)
    healthy.update(10, embed_std=0.5, entropy=2.0, kl=0.3)
    assert healthy.warned == []


def test_fused_colour_jitter_keeps_each_operations_invariant():
    off = {"jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "grayscale_p": 0.0}
    x = 0.3 + 0.3 * torch.rand(6, 3, 8, 8)  # mid-range: no clamping at these strengths
    gen = torch.Generator().manual_seed(0)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def run(**kw):
        return MultiCropAugment(8, augment=AugmentConfig(**{**off, **kw})).colour(x, gen)

    y = run(brightness=0.3)  # brightness: one factor per image
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-5)
    assert not torch.allclose(ratio[0], ratio[1])
    y = run(contrast=0.3)  # contrast: towards the image's mean grey, which it keeps
    torch.testing.assert_close((y * luma).sum(1).mean((-1, -2)), (x * luma).sum(1).mean((-1, -2)), atol=1e-5, rtol=0)
    y = run(saturation=0.5)  # saturation: every pixel keeps its grey value
    torch.testing.assert_close((y * luma).sum(1), (x * luma).sum(1), atol=1e-5, rtol=0)
    y = run(hue=0.3)  # hue: a chroma rotation keeps luma
    torch.testing.assert_close((y * luma).sum(1), (x * luma).sum(1), atol=1e-4, rtol=0)
    grey = x.mean(1, keepdim=True).expand_as(x).contiguous()  # grey stays grey under every jitter
    y = MultiCropAugment(8, augment=AugmentConfig(**{**off, "brightness": 0.4, "contrast": 0.4,
                                                     "saturation": 0.4, "hue": 0.4})).colour(grey, gen)
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-5, rtol=0)
    y = run(grayscale_p=1.0)
    torch.testing.assert_close(y[:, 0], (x * luma).sum(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 2], y[:, 1], atol=0, rtol=0)


def test_geometric_augmentation_is_a_dihedral_permutation():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4).repeat(20, 1, 1, 1)
    y = MultiCropAugment(4).geometric(x, torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(x, y, strict=True):
        variants = [torch.rot90(v, r, dims=(-2, -1)) for v in (a, a.flip(-1)) for r in range(4)]
        match = [i for i, v in enumerate(variants) if torch.equal(v, b)]
        assert match, "every output is a flip/rotation of its input"
        seen.add(match[0])
    assert len(seen) >= 6  # and the group is explored
