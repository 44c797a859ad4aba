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


# ------------------------------------------------------------------ real pixels (scikit-image's IHC micrograph)


def _ihc() -> np.ndarray:
    """scikit-image's 512 x 512 IHC micrograph (bundled, offline): real bright-field tissue filling the frame."""
    from skimage import data

    return data.immunohistochemistry()


@pytest.mark.parametrize("mode", ["bright", "auto"])
def test_real_brightfield_frame_is_tissue(mode):
    res = detect_tissue(_ihc(), background=mode)
    assert res.background == "bright"
    assert res.fraction >= 0.95


def test_real_brightfield_without_glass_is_all_tissue_and_says_so():
    res = detect_tissue(_ihc()[:256, 100:])  # a crop that tissue fills entirely
    assert res.background == "bright" and not res.background_found
    assert res.fraction == 1.0  # Otsu would have split stroma from epithelium here
    assert "no background" in res.background_method


@pytest.mark.parametrize("mode", ["bright", "auto"])
def test_real_brightfield_padded_with_glass(mode):
    rng = np.random.default_rng(0)
    slide = np.clip(rng.normal((243, 243, 245), 2.0, (800, 800, 3)), 0, 255).astype(np.uint8)
    slide[150:662, 150:662] = _ihc()
    res = detect_tissue(slide, background=mode)
    assert res.background == "bright" and res.background_found
    assert res.mask[150:662, 150:662].mean() >= 0.95
    outside = res.mask.copy()
    outside[146:666, 146:666] = False  # a few pixels of edge smoothing aside, the glass is not tissue
    assert not outside.any()
    assert min(res.background_rgb) > 235


def _dark_field_ihc(seed: int = 0) -> np.ndarray:
    """The IHC image inverted and dimmed by half: a dim fluorescence-like image of the same tissue."""
    rng = np.random.default_rng(seed)
    inverted = (255 - _ihc().astype(np.float64)) * 0.5 + rng.normal(0, 1.0, (512, 512, 3))
    return np.clip(inverted, 0, 255).astype(np.uint8)


def test_real_tissue_dimmed_and_inverted_is_found_in_dark_mode():
    res = detect_tissue(_dark_field_ihc())
    assert res.background == "dark"
    assert res.fraction >= 0.8  # the darkest, flattest stroma is indistinguishable from a background
    rng = np.random.default_rng(1)
    slide = np.clip(rng.normal(3, 1.5, (800, 800, 3)), 0, 255).astype(np.uint8)  # camera noise on black
    slide[150:662, 150:662] = _dark_field_ihc()
    res = detect_tissue(slide)
    assert res.background == "dark" and res.background_found and "dark flat background" in res.background_method
    assert res.mask[150:662, 150:662].mean() >= 0.95
    outside = res.mask.copy()
    outside[146:666, 146:666] = False
    assert not outside.any()


def test_dim_fluorescence_above_the_noise_floor_is_tissue():
    # tissue only 8 grey levels above a black background with noise sigma 1 (clearly visible by eye)
    rng = np.random.default_rng(3)
    truth = _blob()
    img = rng.normal(4, 1.0, truth.shape + (3,))
    yy, xx = np.mgrid[0:truth.shape[0], 0:truth.shape[1]]
    nuclei = (np.sin(yy / 3.0) * np.sin(xx / 3.0) > 0.3) & truth
    img[truth] += 8
    img[nuclei] += 60  # bright nuclei in dim tissue
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    res = detect_tissue(rgb)
    assert res.background == "dark" and res.background_found and 0.5 < res.noise < 1.5  # the noise floor, measured
    assert _iou(res.mask, truth) > 0.9
    # a global Otsu split of the same signal finds the nuclei, not the tissue
    t, _, _ = otsu_threshold(rgb.max(-1))
    assert _iou(rgb.max(-1) > t, truth) < 0.6


def test_pen_marks_found_on_brightfield_not_on_stain():
    from duvflow.slides.tissue import pen_marks

    truth = _blob()
    rgb = _brightfield(truth)
    assert not pen_marks(rgb).any()  # H&E-like pink/purple and glass are never ink
    rgb[60:66, 100:300] = (40, 150, 90)  # a green marker stroke
    rgb[240:250, 50:60] = (25, 25, 30)  # black ink
    ink = pen_marks(rgb)
    assert ink[62, 150:250].all() and ink[244, 54]
    assert ink.sum() < 2 * (6 * 200 + 10 * 10)  # the strokes and a rim of smoothing, nothing else


def test_auto_records_how_the_mode_was_chosen():
    truth = _blob()
    bright = detect_tissue(_brightfield(truth))
    dark = detect_tissue(_fluorescence(truth))
    assert "glass" in bright.background_method and bright.background_found and bright.glass_fraction > 0.5
    assert "dark flat background" in dark.background_method and dark.dark_fraction > 0.5
    assert detect_tissue(_fluorescence(truth), background="dark").background_method == "requested"
