"""Tissue detection: dark-background fluorescence and white-background bright-field, auto mode."""

from __future__ import annotations

import numpy as np
import pytest

from duvflow.slides.reader import open_slide
from duvflow.slides.tissue import choose_background, detect_tissue, otsu_threshold


def _blob(h: int = 300, w: int = 400) -> np.ndarray:
    """An irregular tissue shape with a hole, off-centre, not touching the border."""
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.arctan2(yy - 140, xx - 180)
    radius = 90 + 20 * np.sin(3 * angle) + 10 * np.cos(5 * angle)
    blob = np.hypot(yy - 140, xx - 180) < radius
    hole = np.hypot(yy - 150, xx - 200) < 18
    return blob & ~hole


def _fluorescence(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Dark background; tissue bright in two fluorescence colours, part of it dim (weak signal)."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    img = rng.normal([6, 6, 10], 2.0, (h, w, 3))
    tissue = rng.normal([150, 60, 170], 25, (h, w, 3))
    dim = np.zeros_like(mask)
    dim[:, : w // 3] = True  # a weakly fluorescent region: still tissue
    tissue[dim] = rng.normal([45, 20, 50], 8, (int(dim.sum()), 3))
    img[mask] = tissue[mask]
    return np.clip(img, 0, 255).astype(np.uint8)


def _brightfield(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """White glass; pink-purple H&E-like tissue, part of it pale."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    img = rng.normal([242, 242, 244], 3.0, (h, w, 3))
    tissue = rng.normal([220, 140, 190], 15, (h, w, 3))
    pale = np.zeros_like(mask)
    pale[:, : w // 3] = True
    tissue[pale] = rng.normal([236, 200, 222], 5, (int(pale.sum()), 3))
    img[mask] = tissue[mask]
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(30, 5, 5000), rng.normal(180, 10, 3000)])
    t, mu0, mu1 = otsu_threshold(values)
    assert 45 < t < 160
    assert abs(mu0 - 30) < 2 and abs(mu1 - 180) < 2


@pytest.mark.parametrize(("make", "mode"), [(_fluorescence, "dark"), (_brightfield, "bright")])
def test_detects_tissue_in_both_modes(make, mode):
    truth = _blob()
    rgb = make(truth)
    for requested in (mode, "auto"):
        res = detect_tissue(rgb, background=requested)
        assert res.background == mode
        assert _iou(res.mask, truth) > 0.95, requested
    # the hole stays a hole, the dim/pale third of the tissue stays tissue
    assert not res.mask[150, 200]
    assert res.mask[140, 110]
    assert choose_background(rgb) == mode


def test_background_colour_is_the_glass():
    truth = _blob()
    assert detect_tissue(_fluorescence(truth)).background_rgb[0] < 15
    assert detect_tissue(_brightfield(truth)).background_rgb[0] > 230


def test_wrong_mode_does_not_find_the_tissue():
    # Dark-mode signal on a bright-field slide marks the glass, not the tissue: the choice matters.
    truth = _blob()
    wrong = detect_tissue(_brightfield(truth), background="dark")
    assert _iou(wrong.mask, truth) < 0.5


@pytest.mark.parametrize("mode", ["auto", "dark", "bright"])
def test_tissue_free_gives_empty_mask(mode):
    rng = np.random.default_rng(1)
    noise = np.clip(rng.normal([5, 5, 8], 1.6, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(noise, background=mode).mask.any()
    glass = np.clip(rng.normal(240, 3, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(glass, background=mode).mask.any()


def test_specks_removed():
    truth = _blob()
    rgb = _fluorescence(truth)
    rgb[10, 10] = rgb[290, 390] = (255, 255, 255)  # single bright pixels (dust)
    mask = detect_tissue(rgb).mask
    assert not mask[10, 10] and not mask[290, 390]


def test_invalid_pixels_never_tissue():
    truth = _blob()
    rgb = _fluorescence(truth)
    valid = np.ones(truth.shape, bool)
    valid[:, 200:] = False  # outside the scanned area (transparent in OpenSlide)
    res = detect_tissue(rgb, valid=valid)
    assert not res.mask[:, 200:].any()
    assert _iou(res.mask, truth & valid) > 0.95


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="background"):
        detect_tissue(np.zeros((8, 8, 3), np.uint8), background="grey")
    with pytest.raises(ValueError, match="RGB"):
        detect_tissue(np.zeros((8, 8), np.uint8))


def test_demo_slide_thumbnail_is_dark_background(tiny_pyramid_tiff):
    with open_slide(tiny_pyramid_tiff) as slide:
        rgba, ds = slide.thumbnail(256)
    assert max(rgba.shape[:2]) == 256 and ds == pytest.approx(4.0)
    res = detect_tissue(rgba[..., :3], rgba[..., 3] >= 128)
    assert res.background == "dark"
    assert 0.1 < res.fraction < 0.9
    # tissue is where the fluorescence is: its mean brightness far above the rest
    bright = rgba[..., :3].max(-1).astype(float)
    assert bright[res.mask].mean() > 4 * bright[~res.mask].mean()


def test_brightfield_png_is_bright_background(brightfield_png):
    with open_slide(brightfield_png) as slide:
        rgba, _ = slide.thumbnail(400)
    res = detect_tissue(rgba[..., :3])
    assert res.background == "bright"
    h, w = res.mask.shape
    assert res.mask[h // 2, w // 2] and not res.mask[2, 2] and not res.mask[-3, -3]
    assert 0.2 < res.fraction < 0.6


def test_tissue_free_slide(tissue_free_tiff):
    with open_slide(tissue_free_tiff) as slide:
        rgba, _ = slide.thumbnail(256)
    res = detect_tissue(rgba[..., :3])
    assert res.background == "dark"
    assert not res.mask.any()
