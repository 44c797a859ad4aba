"""Stain jitter in HED space (bright-field) and in dye-intensity space (fluorescence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duvflow.core.stain import hed_to_rgb, rgb_to_hed, stain_jitter


def _he_like(b: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Images made of haematoxylin and eosin only (so the HED round trip is exact)."""
    g = torch.Generator().manual_seed(seed)
    hed = torch.zeros(b, 3, size, size, dtype=torch.float64)
    hed[:, 0] = 0.02 + 0.06 * torch.rand(b, size, size, generator=g, dtype=torch.float64)
    hed[:, 1] = 0.01 + 0.04 * torch.rand(b, size, size, generator=g, dtype=torch.float64)
    return hed_to_rgb(hed)


def test_hed_matches_scikit_image_and_round_trips():
    from skimage.color import rgb2hed

    rgb = _he_like()
    ours = rgb_to_hed(rgb)
    theirs = np.stack([rgb2hed(img.permute(1, 2, 0).numpy()) for img in rgb]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours.numpy(), np.maximum(theirs, 0), atol=1e-9)
    torch.testing.assert_close(hed_to_rgb(ours), rgb, atol=1e-9, rtol=0)


def test_hed_jitter_scales_and_shifts_each_stain_by_the_drawn_amounts():
    rgb = _he_like(b=4)
    out = stain_jitter(rgb, torch.Generator().manual_seed(7), space="hed", scale=0.2, shift=0.01)
    g = torch.Generator().manual_seed(7)  # the same draws, in the documented order
    alpha = 1 + 0.2 * (2 * torch.rand(4, 3, generator=g) - 1)
    beta = 0.01 * (2 * torch.rand(4, 3, generator=g) - 1)
    expected = rgb_to_hed(rgb) * alpha.double()[:, :, None, None] + beta.double()[:, :, None, None]
    inside = (expected > 0).all(1, keepdim=True).expand_as(expected)  # nothing clamped at zero stain
    torch.testing.assert_close(rgb_to_hed(out)[inside], expected[inside], atol=1e-6, rtol=1e-5)
    assert (alpha - 1).abs().max() > 0.05  # the images did change


def test_fluorescence_jitter_is_per_dye_gain_and_offset():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    out = stain_jitter(x, torch.Generator().manual_seed(3), space="fluorescence", scale=0.3, shift=0.05)
    g = torch.Generator().manual_seed(3)
    alpha = 1 + 0.3 * (2 * torch.rand(2, 3, generator=g) - 1)
    beta = 0.05 * (2 * torch.rand(2, 3, generator=g) - 1)
    expected = (x * alpha[:, :, None, None] + beta[:, :, None, None]).clamp(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # with dye colours, the gain applies to the unmixed dyes: a pure dye stays on its colour line
    dyes = torch.tensor([[0.2, 0.3, 0.9], [0.9, 0.4, 0.6], [0.1, 0.9, 0.2]])
    pure = (0.5 * dyes[0]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    out = stain_jitter(pure, torch.Generator().manual_seed(0), space="fluorescence", scale=0.3, shift=0.0,
                       dye_colours=dyes)
    ratio = out[0, :, 0, 0] / dyes[0]
    torch.testing.assert_close(ratio, ratio[0].expand(3), atol=1e-5, rtol=1e-5)


def test_seeding_batching_dtype_and_off_switch():
    x = _he_like(b=5).float()
    a = stain_jitter(x, torch.Generator().manual_seed(11))
    assert torch.equal(a, stain_jitter(x, torch.Generator().manual_seed(11)))
    assert not torch.equal(a, stain_jitter(x, torch.Generator().manual_seed(12)))
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert (a - x).abs().amax(dim=(1, 2, 3)).min() > 0  # every image gets its own change
    half = stain_jitter(x.bfloat16(), torch.Generator().manual_seed(11))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), a, atol=2e-2, rtol=0)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert stain_jitter(x, g, space="none") is x and torch.equal(g.get_state(), state)  # draws nothing
    with pytest.raises(ValueError, match="stain space"):
        stain_jitter(x, g, space="hsv")


def test_classifier_and_dino_augmentations_apply_the_configured_stain_jitter():
    from duvflow.classifier.config import ClassifierAugmentConfig as ClassifierAugment
    from duvflow.classifier.data import augment
    from duvflow.ssl.augment import MultiCropAugment
    from duvflow.ssl.config import CropConfig
    from duvflow.ssl.config import DinoAugmentConfig as DinoAugment

    image = _he_like(b=1, size=16)[0].float()
    plain = {"hflip": False, "vflip": False, "rot90": False, "brightness": 0, "contrast": 0, "saturation": 0,
             "hue": 0}
    off = augment(image.clone(), ClassifierAugment(**plain), torch.Generator().manual_seed(0))
    on = augment(image.clone(), ClassifierAugment(**plain, stain="hed", stain_scale=0.3),
                 torch.Generator().manual_seed(0))
    torch.testing.assert_close(off, image)
    assert (on - image).abs().max() > 1e-3
    again = augment(image.clone(), ClassifierAugment(**plain, stain="hed", stain_scale=0.3),
                    torch.Generator().manual_seed(0))
    assert torch.equal(on, again)  # drawn from the sample's generator only
    dino = DinoAugment(jitter_p=0, grayscale_p=0, blur_p_global=(0.0, 0.0), blur_p_local=0, solarize_p=0)
    crops = CropConfig(n_local=0, global_scale=(1.0, 1.0))
    batch = _he_like(b=2, size=16).float()
    views_off = MultiCropAugment(16, crops, dino)(batch, torch.Generator().manual_seed(1))
    views_on = MultiCropAugment(16, crops, DinoAugment(**{**dino.__dict__, "stain": "fluorescence",
                                                          "stain_scale": 0.3}))(batch, torch.Generator().manual_seed(1))
    assert len(views_on) == 2 and all((a - b).abs().max() > 1e-3 for a, b in zip(views_on, views_off, strict=True))
