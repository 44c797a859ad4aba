"""requirements.txt is the single source of truth for pins; the conda env must mirror it."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_every_requirement_is_pinned_exactly():
    unpinned = [r for r in _requirements() if "==" not in r]
    assert not unpinned, f"requirements without an exact pin: {unpinned}"


def test_conda_env_has_the_same_pins_as_requirements():
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "duvflow.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {p for p in pip_section if "==" in p}
    assert conda_pins == _requirements()


def test_torch_pins_match_the_tested_pair():
    reqs = _requirements()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs


def test_conda_env_python_satisfies_the_package_and_brings_no_other_duvflow():
    """The env's Python meets pyproject's requires-python; duvflow itself comes from the checkout
    (tests/unit/test_deployment.py), so the env installs no copy of it that could go stale."""
    import tomllib

    env = yaml.safe_load((ROOT / "workflow" / "envs" / "duvflow.yaml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required.startswith(">=")
    want = tuple(int(x) for x in required[2:].split("."))
    assert tuple(int(x) for x in python.split("=")[1].split(".")) >= want
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert not [p for p in pip_section if "duvflow" in p or p.startswith(("-e", ".", "/", "git+"))]
