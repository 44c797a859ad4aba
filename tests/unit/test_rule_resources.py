"""Every rule tells the scheduler what it needs (threads, memory, time, GPUs), GPU rules claim
their cards through duvflow.gpu.gpu_job, and the SLURM profile sends exactly those to the GPU
partition. Read from the rule files' text: no workflow run needed."""

import re
from pathlib import Path

import pytest
import yte

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
# rule-name prefixes of the training / embedding / sampling / inference stages: they run on GPUs
GPU_PREFIXES = ("train_", "embed_", "encode_", "sample_", "predict_", "measure_")
# training rules whose package function runs data-parallel when the rule asks for several GPUs
DDP_RULES = {"train_dino", "train_vae", "train_ldm", "train_classifier"}


def _rules() -> dict[str, str]:
    """``{rule name: its block}``: the ``rule x:`` line and the indented lines after it."""
    rules = {}
    for path in RULE_FILES:
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), re.MULTILINE):
            rules[m.group(1)] = m.group(2)
    return rules


def _section(block: str, key: str) -> str:
    m = re.search(rf"^    {key}:(.*?)(?=^    \w+:|\Z)", block, re.MULTILINE | re.DOTALL)
    return m.group(1) if m else ""


RULES = {k: v for k, v in _rules().items() if k != "all"}


def _script(block: str) -> Path | None:
    m = re.search(r'^    script:\s*"([^"]+)"', block, re.MULTILINE)
    return (ROOT / "workflow" / "rules" / m.group(1)).resolve() if m else None


def _gpu_rules() -> set[str]:
    return {name for name, block in RULES.items() if re.search(r"\bgpu\s*=", _section(block, "resources"))}


def test_rule_files_were_found():
    assert len(RULES) >= 20 and {"tile_slide", "train_dino"} <= set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_declares_log_threads_memory_and_runtime(name):
    block = RULES[name]
    assert re.search(r"^    log:", block, re.MULTILINE), f"rule {name}: no log:"
    assert re.search(r"^    threads:\s*\S", block, re.MULTILINE), f"rule {name}: no threads:"
    resources = _section(block, "resources")
    for key in ("mem_mb", "runtime"):
        assert re.search(rf"\b{key}\s*=", resources), f"rule {name}: resources without {key}"


@pytest.mark.parametrize("name", sorted(RULES))
def test_gpu_tag_and_device_claim_go_together(name):
    block, gpu_rules = RULES[name], _gpu_rules()
    script = _script(block)
    claims = script is not None and "gpu_job(snakemake.resources)" in script.read_text()
    if name.startswith(GPU_PREFIXES):
        assert name in gpu_rules, f"rule {name} trains/embeds/samples/predicts but declares no gpu resource"
    if name in gpu_rules:
        gpu = re.search(r"\bgpu\s*=\s*(.+)", _section(block, "resources")).group(1)
        assert "gpus(" in gpu or "res(" in gpu or "config" in gpu, f"rule {name}: gpu={gpu} is not read from config"
        assert claims, f"rule {name} asks for GPUs but {script} does not claim them with gpu_job(snakemake.resources)"
    else:
        assert not claims, f"rule {name} claims GPUs in its script but declares no gpu resource"
    if name in DDP_RULES:
        assert "job.launch(" in script.read_text(), f"{script}: call the trainer with job.launch(...) (DDP)"


def test_slurm_profile_sends_exactly_the_gpu_rules_to_the_gpu_partition():
    profile = yte.process_yaml((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text(), require_use_yte=True)
    gpu_partition_rules = {rule for rule, res in profile["set-resources"].items() if "slurm_partition" in res}
    assert gpu_partition_rules == _gpu_rules()
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"


def test_slurm_logs_go_under_the_runs_output_dir(monkeypatch, tmp_path):
    text = (ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text()
    mine = tmp_path / "my-config.yaml"
    mine.write_text("output_dir: /scratch/me/duvflow-out\n")
    later = tmp_path / "later.yaml"
    later.write_text("seed: 3\n")  # sets no output_dir: the earlier file's stays
    for argv, logdir in [
        (["--profile", "workflow/profiles/slurm"], "results/logs/slurm"),
        (["--configfile", str(mine), str(later), "--cores", "4"], "/scratch/me/duvflow-out/logs/slurm"),
        (["--configfile", str(mine), "--config", "seed=1", "output_dir=run2"], "run2/logs/slurm"),
    ]:
        monkeypatch.setattr("sys.argv", ["snakemake", *argv])
        assert yte.process_yaml(text, require_use_yte=True)["slurm-logdir"] == logdir, argv


def test_default_profile_caps_gpu_jobs_at_the_visible_cards(monkeypatch):
    text = (ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text()
    monkeypatch.setattr("sys.argv", ["snakemake", "--cores", "4"])
    monkeypatch.delenv("DUVFLOW_GPUS", raising=False)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("DUVFLOW_GPU_IDS", "0,1,2")
    assert yte.process_yaml(text, require_use_yte=True)["resources"] == {"gpu": 3}
    monkeypatch.setenv("DUVFLOW_GPU_IDS", "")
    assert "resources" not in yte.process_yaml(text, require_use_yte=True)  # no card: no cap
    monkeypatch.setenv("DUVFLOW_GPUS", "2")
    assert yte.process_yaml(text, require_use_yte=True)["resources"] == {"gpu": 2}
    # a SLURM run also loads this profile; SLURM grants the cards there, so no local cap
    monkeypatch.setattr("sys.argv", ["snakemake", "--profile", "workflow/profiles/slurm"])
    assert "resources" not in yte.process_yaml(text, require_use_yte=True)
