"""Pretrained starts: hub names resolved offline from a local Hugging Face cache, the start-of-run
check's messages, and the classifier's start from the DINO teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from duvflow.core.backbone import create_backbone, initial_weights
from duvflow.core.pretrained import check_pretrained, hub_repo, is_hub_repo_id
from duvflow.train.checkpoint import save_weights

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay ``files`` out as the hub libraries cache them (``models--org--name/snapshots/<commit>/``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(Path(source).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path):
    """A hub cache holding a tiny timm ViT under a timm tag and under an hf-hub: name, and a tiny VAE."""
    from diffusers import AutoencoderKL

    cache, work = tmp_path / "hf" / "hub", tmp_path / "work"
    work.mkdir()
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", img_size=32, **TINY_VIT)
    save_weights(vit.state_dict(), work / "model.safetensors")
    put_in_hub_cache(cache, "timm/vit_tiny_patch16_224.augreg_in21k", {"model.safetensors": work / "model.safetensors"})
    (work / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 0, "model_args": {"img_size": 32, **TINY_VIT},
        "pretrained_cfg": {"mean": [0.7, 0.6, 0.5], "std": [0.2, 0.2, 0.2], "input_size": [3, 32, 32],
                           "num_classes": 0}}))
    put_in_hub_cache(cache, "duvflow-test/tiny-vit", {"model.safetensors": work / "model.safetensors",
                                                      "config.json": work / "config.json"})
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=32, scaling_factor=0.3)
    vae.save_pretrained(work / "vae", safe_serialization=True)
    put_in_hub_cache(cache, "duvflow-test/tiny-vae", {f.name: f for f in (work / "vae").iterdir()})
    return {"cache": cache, "vit": vit.state_dict(), "vae": vae.state_dict(), "work": work}


def test_hub_names_load_offline_from_the_local_cache(hub_cache, tmp_path):
    # a fresh process: the hub libraries read HF_HUB_CACHE and HF_HUB_OFFLINE at import time
    script = textwrap.dedent(f"""
        import torch
        from timm.data import resolve_model_data_config
        from duvflow.core.backbone import create_backbone, initial_weights
        from duvflow.core.pretrained import check_pretrained
        from duvflow.ldm.vae import load_vae
        from duvflow.train.checkpoint import save_weights

        config = {{"classifier": {{"model": "vit_tiny_patch16_224.augreg_in21k", "init": "pretrained"}},
                   "dino": {{"backbone": "hf-hub:duvflow-test/tiny-vit", "init": "pretrained"}},
                   "vae": {{"pretrained": "duvflow-test/tiny-vae"}}}}
        assert check_pretrained(config) == [], check_pretrained(config)
        tagged = create_backbone("vit_tiny_patch16_224.augreg_in21k", img_size=32, **initial_weights("pretrained"),
                                 **{TINY_VIT!r})
        hub = create_backbone("hf-hub:duvflow-test/tiny-vit", **initial_weights("pretrained"))
        assert tuple(resolve_model_data_config(hub)["mean"]) == (0.7, 0.6, 0.5), resolve_model_data_config(hub)  # the repo's pretrained config
        save_weights(tagged.state_dict(), "{tmp_path}/tagged.safetensors")
        save_weights(hub.state_dict(), "{tmp_path}/hub.safetensors")
        vae = load_vae("duvflow-test/tiny-vae")
        assert vae.config.scaling_factor == 0.3
        save_weights(vae.state_dict(), "{tmp_path}/vae.safetensors")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache["cache"]), PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from duvflow.train.checkpoint import load_weights

    for name, expected in (("tagged", hub_cache["vit"]), ("hub", hub_cache["vit"]), ("vae", hub_cache["vae"])):
        got = load_weights(tmp_path / f"{name}.safetensors")
        assert set(got) == set(expected), name
        assert all(torch.equal(got[k], expected[k]) for k in expected), name


def _offline_cache(monkeypatch, cache: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def test_check_finds_cached_weights_and_names_key_and_remedies_for_the_rest(hub_cache, monkeypatch):
    _offline_cache(monkeypatch, hub_cache["cache"])
    config = {"classifier": {"model": "vit_base_patch16_224.augreg_in21k_ft_in1k", "init": "pretrained"},
              "dino": {"backbone": "vit_tiny_patch16_224.augreg_in21k", "init": "pretrained"},
              "vae": {"pretrained": "stabilityai/sd-vae-ft-mse"}}
    problems = check_pretrained(config)
    assert len(problems) == 2  # the cached DINO start is fine; one line for each of the others
    classifier, vae = problems
    assert "(classifier.model)" in classifier and "vit_base_patch16_224.augreg_in21k_ft_in1k" in classifier
    assert "HF_HUB_OFFLINE" in classifier and "set classifier.weights to a local file or folder" in classifier
    assert "hf download timm/vit_base_patch16_224.augreg_in21k_ft_in1k" in classifier and "HF_TOKEN" in classifier
    assert "(vae.pretrained)" in vae and "set vae.pretrained to a local" in vae and "stabilityai/sd-vae-ft-mse" in vae
    assert all("\n" not in p for p in problems)


def test_check_reports_bad_local_paths_untagged_names_and_random_with_weights(tmp_path, monkeypatch):
    _offline_cache(monkeypatch, tmp_path / "empty-cache")
    problems = check_pretrained({
        "classifier": {"model": "vit_base_patch16_224", "init": "pretrained"},
        "dino": {"backbone": "vit_small_patch16_224", "init": "pretrained", "weights": str(tmp_path / "nope.pth")},
        "vae": {"pretrained": str(tmp_path / "no-vae")}})
    text = "\n".join(problems)
    assert len(problems) == 3
    assert "classifier.model: 'vit_base_patch16_224' names no pretrained tag" in text
    assert f"the local path {tmp_path / 'nope.pth'} does not exist" in text and "point dino.weights at" in text
    assert f"the local path {tmp_path / 'no-vae'} does not exist" in text
    # a weights file with init: random is a contradiction, not silently ignored
    problems = check_pretrained({"classifier": {"model": "vit_tiny_patch16_224", "init": "random",
                                                "weights": "w.safetensors"}})
    assert problems and "classifier.weights is set but classifier.init is 'random'" in problems[0]
    # random init everywhere (the demo and test configs) needs nothing
    assert check_pretrained({"classifier": {"model": "vit_tiny_patch16_224", "init": "random"},
                             "dino": {"backbone": "vit_tiny_patch16_224", "init": "random"},
                             "vae": {"pretrained": None}}) == []


def test_check_online_reports_gated_repos(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    asked = []

    def gated(repo_id, **kwargs):
        asked.append(repo_id)
        err = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(err, "gated")
        raise err

    monkeypatch.setattr(huggingface_hub, "auth_check", gated)
    problems = check_pretrained({"dino": {"backbone": "hf-hub:MahmoodLab/UNI", "init": "pretrained"}})
    assert asked == ["MahmoodLab/UNI"]
    assert len(problems) == 1 and "MahmoodLab/UNI is gated" in problems[0] and "(dino.backbone)" in problems[0]


def test_dino_init_needs_the_teachers_architecture():
    base = {"classifier": {"model": "vit_small_patch16_224", "init": "dino", "model_kwargs": {}},
            "dino": {"backbone": "vit_small_patch16_224.dino", "init": "random", "model_kwargs": {}, "pooling": "cls"}}
    assert check_pretrained(base) == []
    other = {**base, "classifier": {**base["classifier"], "model": "vit_base_patch16_224"}}
    assert "is not dino.backbone 'vit_small_patch16_224.dino'" in check_pretrained(other)[0]
    mean = {**base, "dino": {**base["dino"], "pooling": "mean"}}
    assert "classifier.model_kwargs.global_pool: avg" in check_pretrained(mean)[0]


def test_hub_repo_names_match_timms_pretrained_configs():
    import timm

    for name in ("vit_base_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224.dino",
                 "vit_base_patch16_224.dino"):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_id.rstrip("/") in (hub_repo(name), "timm"), name  # 'timm/' = timm/<name>
        assert hub_repo(name) == f"timm/{name}"
    assert hub_repo("hf-hub:bioptimus/H-optimus-0") == "bioptimus/H-optimus-0"
    assert hub_repo("vit_base_patch16_224") is None
    assert is_hub_repo_id("stabilityai/sd-vae-ft-mse") and not is_hub_repo_id(str(ROOT / "config"))


def test_paper_config_names_pretrained_weights_for_all_three_models():
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["classifier"]["init"] == "pretrained" and "augreg" in config["classifier"]["model"]
    assert config["dino"]["init"] == "pretrained" and config["dino"]["backbone"].endswith(".dino")
    assert config["vae"]["pretrained"] in ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")
    for name in ("demo.yaml",):
        demo = yaml.safe_load((ROOT / "config" / name).read_text())
        assert demo["classifier"]["init"] == demo["dino"]["init"] == "random"


def test_classifier_starts_from_the_dino_teacher(tmp_path):
    from duvflow.classifier.model import build_classifier
    from duvflow.ssl.model import build_backbone

    teacher = build_backbone("vit_tiny_patch16_224", model_kwargs=TINY_VIT, pooling="cls", img_size=32,
                             weights=None, hub=False, seed=5)
    with torch.no_grad():  # a trained teacher differs from any fresh init
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_weights(teacher.state_dict(), tmp_path / "teacher.safetensors")
    model = build_classifier("vit_tiny_patch16_224", img_size=32, model_kwargs=TINY_VIT,
                             **initial_weights("dino", teacher=tmp_path / "teacher.safetensors"))
    got, expected = model.backbone.state_dict(), teacher.state_dict()
    assert set(expected) <= set(got) and set(got) - set(expected) == {"head.weight", "head.bias"}
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="teacher"):
        initial_weights("dino")


def test_model_kwargs_may_name_timm_layers():
    import timm.layers
    from torch import nn

    from duvflow.core.backbone import timm_layer_kwargs

    kwargs = timm_layer_kwargs({"mlp_layer": "SwiGLUPacked", "act_layer": "silu", "depth": 2})
    assert kwargs == {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": nn.SiLU, "depth": 2}
    with pytest.raises(ValueError, match="model_kwargs.mlp_layer: 'NoSuchMlp'"):
        timm_layer_kwargs({"mlp_layer": "NoSuchMlp"})


def test_local_weights_folder_as_hf_download_writes_it(tmp_path):
    torch.manual_seed(3)
    source = create_backbone("vit_tiny_patch16_224", img_size=32, **TINY_VIT)
    (tmp_path / "snapshot").mkdir()
    save_weights(source.state_dict(), tmp_path / "snapshot" / "model.safetensors")
    (tmp_path / "snapshot" / "config.json").write_text("{}")
    model = create_backbone("vit_tiny_patch16_224", img_size=32, **TINY_VIT,
                            **initial_weights("pretrained", tmp_path / "snapshot"))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        create_backbone("vit_tiny_patch16_224", img_size=32, **TINY_VIT, weights=tmp_path / "empty")
    with pytest.raises(ValueError, match="init is 'random' but a weights file"):
        initial_weights("random", "w.safetensors")
