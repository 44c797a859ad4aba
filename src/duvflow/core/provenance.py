"""Which code produced an output: the stamp every output carries as ``duvflow_version``.

A bare release number says nothing between releases, so the stamp is the version plus where the
code came from, in PEP 440 local-version form:

* ``0.1.0+git.<commit>`` - a clean git checkout (the package is tracked in it);
* ``0.1.0+git.<commit>.dirty.src.<hash>`` - a checkout with uncommitted changes under ``src/`` or
  ``workflow/``: the commit alone would not identify the code, the source hash does;
* ``0.1.0+src.<hash>`` - anything else (an installed copy, a tarball, no ``git`` on the node).

``<hash>`` is the first 16 hex digits of a SHA-256 over the package's ``.py`` files (paths and
contents). Computed once per process, with the standard library only (no torch import), so any
stage may stamp freely.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from duvflow import __version__

__all__ = ["PACKAGE_DIR", "code_version", "git_state", "source_hash"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def source_hash(package_dir: str | Path = PACKAGE_DIR) -> str:
    """SHA-256 (16 hex digits) of the package's Python sources: relative paths and bytes."""
    root = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: str | Path = PACKAGE_DIR) -> tuple[str, bool] | None:
    """``(commit, dirty)`` when ``package_dir`` is tracked in a git checkout, else None.

    Tracked, not merely inside one: a copy installed into a virtual environment that lives in a
    checkout must not be stamped with that checkout's commit. Dirty means uncommitted changes
    (untracked files included) under the checkout's ``src/`` or ``workflow/``; results and other
    files elsewhere do not count.
    """
    package_dir = Path(package_dir)
    if not _git(package_dir, "ls-files", "--", "__init__.py"):
        return None
    lines = (_git(package_dir, "rev-parse", "--show-toplevel", "HEAD") or "").splitlines()
    if len(lines) != 2:
        return None
    top, commit = lines
    code_dirs = [d for d in ("src", "workflow") if (Path(top) / d).is_dir()]
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=normal", "--", *code_dirs)
    return commit, status is None or bool(status)


@functools.cache
def code_version() -> str:
    """The stamp of this process's duvflow code (see the module docstring), computed once."""
    state = git_state()
    if state is None:
        return f"{__version__}+src.{source_hash()}"
    commit, dirty = state
    return f"{__version__}+git.{commit}" + (f".dirty.src.{source_hash()}" if dirty else "")
