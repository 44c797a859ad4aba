"""Shared test fixtures: small slides of every kind the workflow must cope with.

Each fixture writes into the test's own ``tmp_path``. Rendered demo images are cached for the
session (rendering is the slow part; writing a TIFF is cheap).
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from duvflow.demo.cohort import render_slide, write_pyramid_tiff


@pytest.fixture(scope="session", autouse=True)
def _quick_slurm_probe(tmp_path_factory):
    """Snakemake imports every installed executor plugin at start, and the SLURM plugin then runs
    ``scontrol show config`` (10 s time-out) to choose a default: on a machine with a SLURM client
    but no reachable controller (this one between SLURM tests) every Snakemake start waits ~9 s for
    it. The tests' local runs find a ``scontrol`` first on PATH that fails ``show config`` at once
    (the plugin then keeps its defaults, as it does without SLURM) and runs the real one for
    anything else; the SLURM test runs with the real PATH (``DUVFLOW_TEST_REAL_PATH``)."""
    real = shutil.which("scontrol")
    if real is None:
        yield
        return
    shim = tmp_path_factory.mktemp("scontrol-shim") / "scontrol"
    shim.write_text(f'#!/bin/sh\n[ "$1 $2" = "show config" ] && exit 1\nexec {real} "$@"\n')
    shim.chmod(0o755)
    patch = pytest.MonkeyPatch()
    patch.setenv("DUVFLOW_TEST_REAL_PATH", os.environ["PATH"])
    patch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    yield
    patch.undo()


@functools.lru_cache(maxsize=16)
def _rendered(label: str, pattern: str | None, width: int, height: int, mpp: float, seed: int) -> np.ndarray:
    img = render_slide(label=label, pattern=pattern, seed=seed, width=width, height=height, mpp=mpp)
    img.flags.writeable = False
    return img


@pytest.fixture
def demo_slide_factory(tmp_path):
    """``make(label="malignant", pattern=None, width=1024, height=1024, mpp=0.5, seed=0) -> Path``:
    a pyramidal tiled TIFF demo slide (OpenSlide ``generic-tiff``, >= 3 levels, MPP ``mpp``).
    The file name does not contain the label."""
    counter = itertools.count()

    def make(label: str = "malignant", pattern: str | None = None, width: int = 1024, height: int = 1024,
             mpp: float = 0.5, seed: int = 0) -> Path:
        path = tmp_path / "slides" / f"slide{next(counter):03d}.tiff"
        return write_pyramid_tiff(path, _rendered(label, pattern, width, height, mpp, seed), mpp)

    return make


@pytest.fixture
def tiny_pyramid_tiff(demo_slide_factory) -> Path:
    """A 1024x1024 malignant demo slide at 0.5 um/px."""
    return demo_slide_factory("malignant", width=1024, height=1024, mpp=0.5, seed=0)


@pytest.fixture
def mpp_less_tiff(tmp_path) -> Path:
    """A pyramidal demo slide without resolution tags: OpenSlide reports no ``openslide.mpp-x``."""
    return write_pyramid_tiff(tmp_path / "no_mpp.tiff", _rendered("benign", None, 1024, 1024, 0.5, 1), None)


@pytest.fixture
def tissue_free_tiff(tmp_path) -> Path:
    """A pyramidal slide (1024x1024, MPP 0.5) of dark fluorescence background only: no tissue."""
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal([5, 5, 8], 1.6, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    return write_pyramid_tiff(tmp_path / "empty.tiff", img, 0.5)


@pytest.fixture
def brightfield_png(tmp_path) -> Path:
    """A plain (non-pyramidal) bright-field "slide": white background, an H&E-like pink tissue blob
    with purple nuclei, 1200x1000 PNG. OpenSlide reads it only through ``open_slide``'s ImageSlide."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(11)
    w, h = 1200, 1000
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    radius = 330 + 45 * np.sin(3 * angle + 0.5) + 25 * np.cos(5 * angle)
    tissue = np.hypot((yy - h / 2) / 0.85, xx - w / 2) < radius
    img = np.full((h, w, 3), 242, np.float32) + rng.normal(0, 2, (h, w, 3))
    pink = np.array([232, 160, 200], np.float32) + rng.normal(0, 8, (h, w, 3))
    img[tissue] = pink[tissue]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    ys, xs = np.nonzero(tissue[::14, ::14])
    for y, x in zip(ys * 14 + rng.integers(-5, 6, ys.size), xs * 14 + rng.integers(-5, 6, xs.size)):
        r = rng.uniform(3, 6)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(110, 60, 150))
    path = tmp_path / "brightfield.png"
    pil.filter(ImageFilter.GaussianBlur(0.8)).save(path)
    return path


@pytest.fixture
def corrupt_slide(tmp_path) -> Path:
    """A ``.tiff`` whose bytes are garbage after a TIFF signature: neither OpenSlide nor PIL reads it."""
    path = tmp_path / "corrupt.tiff"
    path.write_bytes(b"II*\x00" + np.random.default_rng(3).bytes(4096))
    return path
