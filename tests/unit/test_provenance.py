"""The provenance stamp: version + git commit (and dirtiness) of the checkout, else a source hash."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import duvflow
from duvflow.core import provenance
from duvflow.core.provenance import code_version, git_state, source_hash

SRC = Path(__file__).resolve().parents[2] / "src"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout with a tracked package under src/ and an ignored results/ folder."""
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (tmp_path / ".gitignore").write_text("results/\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path, pkg


@needs_git
def test_clean_checkout_gives_its_commit(checkout):
    root, pkg = checkout
    assert git_state(pkg) == (_git(root, "rev-parse", "HEAD"), False)
    (root / "results").mkdir()
    (root / "results" / "out.txt").write_text("outputs do not make the code dirty")
    (root / "notes.txt").write_text("nor do files outside src/ and workflow/")
    assert git_state(pkg)[1] is False


@needs_git
@pytest.mark.parametrize("change", ["modified", "untracked"])
def test_uncommitted_source_marks_the_checkout_dirty(checkout, change):
    root, pkg = checkout
    target = pkg / ("__init__.py" if change == "modified" else "new_module.py")
    target.write_text("X = 2\n")
    assert git_state(pkg) == (_git(root, "rev-parse", "HEAD"), True)


@needs_git
def test_a_copy_that_git_does_not_track_is_not_stamped_with_the_checkout(checkout):
    # e.g. a non-editable install into a .venv that lives inside the checkout (and is ignored)
    root, pkg = checkout
    (root / ".gitignore").write_text("results/\n.venv/\n")
    installed = root / ".venv" / "site-packages" / "pkg"
    shutil.copytree(pkg, installed)
    assert git_state(installed) is None


def test_outside_git_the_source_hash_identifies_the_code(tmp_path):
    copy = tmp_path / "duvflow"
    shutil.copytree(SRC / "duvflow", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert git_state(copy) is None
    before = source_hash(copy)
    assert re.fullmatch(r"[0-9a-f]{16}", before)
    assert source_hash(copy) == before  # deterministic
    assert before == source_hash(SRC / "duvflow")  # only the .py sources count (no caches, no location)
    (copy / "core" / "labels.py").write_text((copy / "core" / "labels.py").read_text() + "\n# changed\n")
    assert source_hash(copy) != before
    (copy / "core" / "labels.py").rename(copy / "core" / "labels2.py")  # a rename changes it too
    assert len({before, source_hash(copy)}) == 2


def test_code_version_format_and_cache(monkeypatch):
    stamp = code_version()
    assert stamp.startswith(duvflow.__version__ + "+")
    assert re.fullmatch(r"[^+]+\+(git\.[0-9a-f]{40}(\.dirty\.src\.[0-9a-f]{16})?|src\.[0-9a-f]{16})", stamp), stamp
    monkeypatch.setattr(provenance, "git_state", lambda: pytest.fail("recomputed"))
    assert code_version() == stamp  # once per process


def test_fallback_and_dirty_forms(monkeypatch):
    code_version.cache_clear()
    try:
        monkeypatch.setattr(provenance, "git_state", lambda: None)
        assert code_version() == f"{duvflow.__version__}+src.{source_hash()}"
        code_version.cache_clear()
        monkeypatch.setattr(provenance, "git_state", lambda: ("a" * 40, True))
        assert code_version() == f"{duvflow.__version__}+git.{'a' * 40}.dirty.src.{source_hash()}"
    finally:
        code_version.cache_clear()


def test_stamping_is_cheap():
    """Light stages (aggregation, QC) stamp too: no torch (or other heavy) import behind it."""
    code = ("import sys; from duvflow.core.provenance import code_version; code_version(); "
            "heavy = [m for m in ('torch', 'numpy', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


def test_outputs_are_stamped_with_code_version_not_the_bare_version():
    """No module stamps ``duvflow.__version__`` itself (only the provenance module and --version read it)."""
    allowed = {"core/provenance.py", "cli.py"}
    offenders = []
    for path in sorted((SRC / "duvflow").rglob("*.py")):
        rel = path.relative_to(SRC / "duvflow").as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.ImportFrom) and node.module == "duvflow"
                    and any(a.name == "__version__" for a in node.names) and rel not in allowed):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"stamp code_version() from duvflow.core.provenance instead: {offenders}"
