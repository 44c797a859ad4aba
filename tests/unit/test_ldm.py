"""Unit tests of the LDM building blocks: conditioning, CFG sampling, counts, VAE, latent store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ldm_testdata import VAE_CFG, make_cohort

from duvflow.core.config import from_dict
from duvflow.ldm.conditioning import ConditionEncoder, drop_mask
from duvflow.ldm.config import LdmConfig, VaeConfig
from duvflow.ldm.data import StepBatches, read_latent_store
from duvflow.ldm.sample import cfg_combine, guided_ddim, plan_synthetic, synthetic_count
from duvflow.ldm.vae import build_vae, decode_latents, encode_images, encode_latents, load_vae

torch.set_num_threads(1)


def test_condition_drop_rate():
    g = torch.Generator().manual_seed(0)
    mask = drop_mask(200_000, 0.1, g)
    assert mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.1) < 0.003
    assert not drop_mask(1000, 0.0, g).any()


@pytest.mark.parametrize("null", ["zeros", "learned"])
def test_dropped_rows_get_the_null_condition(null):
    enc = ConditionEncoder(kind="ssl", cross_attention_dim=8, num_tokens=2, embed_dim=5, null_condition=null)
    emb = torch.randn(6, 5)
    drop = torch.tensor([True, False, False, True, False, False])
    out = enc(emb, drop)
    full = enc(emb)
    assert torch.equal(out[~drop], full[~drop])
    assert torch.equal(out[drop], enc.null(2))
    if null == "zeros":
        assert torch.count_nonzero(out[drop]) == 0


def test_projection_shapes_and_normalisation():
    ssl = ConditionEncoder(kind="ssl", cross_attention_dim=24, num_tokens=3, embed_dim=10)
    emb = torch.randn(4, 10)
    tokens = ssl(emb)
    assert tokens.shape == (4, 3, 24)
    # the embedding is L2-normalised before the projection: its norm carries no information
    torch.testing.assert_close(ssl(emb * 7.5), tokens)
    cls = ConditionEncoder(kind="class", cross_attention_dim=24, num_tokens=3, num_classes=2)
    assert cls(torch.tensor([0, 1, 1])).shape == (3, 3, 24)
    assert cls.null(5).shape == (5, 3, 24)
    with pytest.raises(ValueError, match="embed_dim"):
        ConditionEncoder(kind="ssl", cross_attention_dim=8)
    with pytest.raises(ValueError, match="ssl' or 'class"):
        ConditionEncoder(kind="text", cross_attention_dim=8)


def test_cfg_combination_hand_computed():
    cond = torch.tensor([1.0, 2.0, -1.0])
    uncond = torch.tensor([0.5, 1.0, 1.0])
    # uncond + 2 * (cond - uncond) = 2 * cond - uncond
    assert torch.equal(cfg_combine(cond, uncond, 2.0), torch.tensor([1.5, 3.0, -3.0]))
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_combine(cond, uncond, 0.0), uncond)


class _CountingUNet(torch.nn.Module):
    """A stand-in denoiser: eps = 0.1 * x + mean(context); records every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context, return_dict=False):
        self.calls.append((x.shape[0], context.clone()))
        return (0.1 * x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1),)


def test_one_unet_call_per_step_on_cond_and_uncond_batch():
    from diffusers import DDIMScheduler

    unet = _CountingUNet()
    sched = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    ctx = torch.full((3, 1, 4), 2.0)
    null = torch.zeros(3, 1, 4)
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = guided_ddim(unet, ctx, null, noise, sched, steps=7, guidance=3.0)
    assert len(unet.calls) == 7
    assert all(b == 6 for b, _ in unet.calls)
    assert torch.equal(unet.calls[0][1], torch.cat([ctx, null]))

    # the same trajectory by hand: two separate evaluations combined with w = 3
    sched2 = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    sched2.set_timesteps(7)
    x = noise.clone()
    for t in sched2.timesteps:
        e_c = 0.1 * x + 2.0
        e_u = 0.1 * x
        x = sched2.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
    torch.testing.assert_close(out, x)

    unet.calls.clear()
    guided_ddim(unet, ctx, null, noise, sched, steps=5, guidance=1.0)
    assert [b for b, _ in unet.calls] == [3] * 5  # no unconditional half needed at w = 1


def test_synthetic_count_formula():
    assert synthetic_count(950, 0.05) == 50  # 5% of 950 + 50
    assert synthetic_count(19000, 0.05) == 1000
    assert synthetic_count(100, 0.0) == 0
    assert synthetic_count(0, 0.05) == 0
    n = synthetic_count(1234, 0.1)
    assert abs(n / (1234 + n) - 0.1) < 1e-3
    with pytest.raises(ValueError):
        synthetic_count(10, 1.0)


def test_plan_is_stratified_and_reproducible():
    labels = np.array([0] * 70 + [1] * 30)
    rows = plan_synthetic(labels, 10, seed=3)
    assert len(rows) == 10
    assert (labels[rows] == 0).sum() == 7 and (labels[rows] == 1).sum() == 3
    assert len(set(rows.tolist())) == 10  # without replacement
    assert np.array_equal(rows, plan_synthetic(labels, 10, seed=3))
    small = np.array([0, 0, 1])
    big = plan_synthetic(small, 9, seed=0)  # more than available: cycles through every patch
    assert (np.bincount(small[big]) == [6, 3]).all()
    assert (np.bincount(big) == [3, 3, 3]).all()
    assert len(plan_synthetic(labels, 0, seed=0)) == 0


def test_step_batches_are_a_function_of_step():
    a, b = StepBatches(10, 4, seed=1), StepBatches(10, 4, seed=1)
    seq = [a(s).tolist() for s in range(6)]
    assert [b(s).tolist() for s in (5, 0, 3)] == [seq[5], seq[0], seq[3]]
    assert sorted(seq[0] + seq[1]) == sorted(set(seq[0] + seq[1]))  # no repeats within an epoch
    assert StepBatches(3, 8, seed=0)(0).shape == (8,)  # fewer samples than a batch: cycles


def test_vae_round_trip_shape_and_scale(tmp_path):
    cfg = from_dict(VaeConfig, {**VAE_CFG, "scaling_factor": 0.5}, "vae")
    vae = build_vae(cfg).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        mean, std = encode_images(vae, images)
        raw = vae.encode(images * 2 - 1).latent_dist
        assert mean.shape == (3, 4, 16, 16)  # two blocks: one downsampling
        torch.testing.assert_close(mean, raw.mean * 0.5)
        torch.testing.assert_close(std, raw.std * 0.5)
        recon = decode_latents(vae, mean)
        torch.testing.assert_close(recon, vae.decode(raw.mean).sample)
    assert recon.shape == images.shape

    # the same network loads back from a diffusers folder and from a bare weights file
    vae.save_pretrained(tmp_path / "folder")
    from duvflow.train.checkpoint import save_weights

    save_weights(vae.state_dict(), tmp_path / "vae.safetensors")
    for source in (load_vae(tmp_path / "folder"), load_vae(tmp_path / "vae.safetensors", cfg)):
        assert not any(p.requires_grad for p in source.parameters())
        with torch.no_grad():
            torch.testing.assert_close(encode_images(source, images)[0], mean)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "missing")
    wrong = from_dict(VaeConfig, {**VAE_CFG, "latent_channels": 8}, "vae")
    with pytest.raises(ValueError, match="does not fit"):
        load_vae(tmp_path / "vae.safetensors", wrong)


def test_pretrained_vae_reference_and_latent_store(tmp_path):
    from duvflow.ldm.vae import train_vae

    cohort = make_cohort(tmp_path)
    cfg = from_dict(VaeConfig, VAE_CFG, "vae")
    torch.manual_seed(0)
    build_vae(cfg).save_pretrained(tmp_path / "user_vae")
    vae_cfg = {**VAE_CFG, "pretrained": str(tmp_path / "user_vae"), "scaling_factor": 0.25}
    train_vae(**cohort, fold="0", output=str(tmp_path / "vae"), checkpoint_dir=str(tmp_path / "vae.ckpt"),
              cfg=vae_cfg, seed=1)
    assert (tmp_path / "vae" / "pretrained.json").is_file()
    vae = load_vae(tmp_path / "vae")
    assert vae.config.scaling_factor == 0.25

    encode_latents(vae=str(tmp_path / "vae"), **cohort, fold="0", output=str(tmp_path / "lat.h5"), cfg=vae_cfg)
    store = read_latent_store(tmp_path / "lat.h5")
    assert store["mean"].shape == (24, 4, 16, 16)  # 3 training slides x 8 patches
    assert set(store["index"]["slide_id"]) == {"s0", "s1", "s4"}  # fold 0's training slides only
    assert store["attrs"]["scaling_factor"] == 0.25
    assert (store["std"] > 0).all()


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(LdmConfig, {"stepz": 3}, "ldm")
    with pytest.raises(ValueError, match="prediction_type"):
        from_dict(LdmConfig, {"prediction_type": "x0"}, "ldm")
    with pytest.raises(ValueError, match="divisible"):
        from_dict(VaeConfig, {"image_size": 30, "block_out_channels": [8, 8, 8]}, "vae")


@pytest.mark.parametrize("section", ["vae", "ldm", "sampling", "fidelity"])
def test_schema_documents_every_setting_with_a_matching_default(section):
    import dataclasses
    from pathlib import Path

    import yaml

    from duvflow.ldm.config import FidelityConfig, SamplingConfig

    cls = {"vae": VaeConfig, "ldm": LdmConfig, "sampling": SamplingConfig, "fidelity": FidelityConfig}[section]
    root = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((root / "workflow/schemas/config.schema.yaml").read_text())["properties"][section]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    assert set(props) == set(fields)
    for key, spec in props.items():
        assert spec.get("description") and "default" in spec, key
        default = tuple(spec["default"]) if isinstance(spec["default"], list) else spec["default"]
        assert default == fields[key], key
    # the shipped configs parse (paper scale, demo, tests)
    for cfg_file in ("config/config.yaml", "config/demo.yaml", "tests/config.yaml"):
        from_dict(cls, yaml.safe_load((root / cfg_file).read_text()).get(section, {}), section)


def test_the_sample_figure_setting_reaches_only_the_rule_that_draws_it():
    """A changed figure grid redraws the figures and reruns no FID job (nor anything else)."""
    import dataclasses
    import re
    from pathlib import Path

    from duvflow.ldm.config import FidelityConfig

    rules_dir = Path(__file__).resolve().parents[2] / "workflow" / "rules"
    readers = {m.group(1) for path in rules_dir.glob("*.smk")
               for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), re.MULTILINE)
               if "sample_figure" in m.group(2)}
    assert readers == {"plot_samples"}
    assert "figure_grid" not in {f.name for f in dataclasses.fields(FidelityConfig)}
