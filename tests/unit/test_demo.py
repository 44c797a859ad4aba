"""The demo cohort generator: OpenSlide-readable pyramids with MPP, determinism, cohort plan,
a plausible fluorescence look and a morphological (not colour) difference between the classes."""

from __future__ import annotations

import numpy as np
import openslide
import pandas as pd
import pytest
from scipy import ndimage as ndi

from duvflow.core.sheet import read_sheet
from duvflow.demo.cohort import (
    DemoConfig,
    cohort_plan,
    generate_slide,
    make_demo_slide,
    render_slide,
    slide_seed,
    write_pyramid_tiff,
    write_sheet,
)


def _tissue(img: np.ndarray) -> np.ndarray:
    """Bright (fluorescent) pixels, smoothed: tissue of a dark-background image."""
    return ndi.uniform_filter(img.astype(np.float32).mean(2), 9) > 14


def _nuclei(img: np.ndarray) -> np.ndarray:
    """Nuclear pixels: the nuclear (blue) channel outshines the cytoplasm/stroma (red) channel."""
    f = img.astype(np.float32)
    return ndi.binary_fill_holes((f[..., 2] > f[..., 0] + 10) & _tissue(img))


def _large_nuclear_fraction(img: np.ndarray, mpp: float, radius_um: float = 3.0) -> float:
    """Share of the nuclear area that survives an opening with a disk of ``radius_um``: a
    granulometry, high where nuclei are enlarged, ~0 where they are small (even if crowded)."""
    nuc = _nuclei(img)
    r = round(radius_um / mpp)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    opened = ndi.binary_opening(nuc, yy**2 + xx**2 <= r * r)
    return float(opened.sum() / max(nuc.sum(), 1))


@pytest.mark.parametrize("compression", ["deflate", "jpeg"])
def test_openslide_reads_generated_slide_as_generic_tiff_with_mpp(tmp_path, compression):
    path = generate_slide(tmp_path / "s.tiff", label="malignant", pattern="mixed", seed=3, width=1100, height=1000,
                          mpp=0.25, compression=compression)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count >= 3
        assert slide.dimensions == (1100, 1000)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
        assert slide.level_downsamples[1] == pytest.approx(2.0, rel=0.01)
        region = np.asarray(slide.read_region((0, 0), 0, (1100, 1000)).convert("RGB"))
    expected = render_slide(label="malignant", pattern="mixed", seed=3, width=1100, height=1000, mpp=0.25)
    if compression == "deflate":
        np.testing.assert_array_equal(region, expected)
    else:  # lossy but close, and colours not swapped (RGB, not YCbCr)
        assert np.abs(region.astype(int) - expected).mean() < 3


def test_pyramid_writer_without_mpp_and_level_count(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (600, 1030, 3), dtype=np.uint8)
    path = write_pyramid_tiff(tmp_path / "x.tiff", img, None)
    with openslide.OpenSlide(str(path)) as slide:
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        assert slide.level_count == 4  # 1030 -> 515 -> 258 -> 129 (fits one tile)
        assert slide.level_dimensions[0] == (1030, 600)
        np.testing.assert_array_equal(np.asarray(slide.read_region((0, 0), 0, (1030, 600)).convert("RGB")), img)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_pyramid_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_pyramid_tiff(tmp_path / "x.tiff", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="compression"):
        write_pyramid_tiff(tmp_path / "x.tiff", np.zeros((64, 64, 3), np.uint8), compression="webp")
    assert not (tmp_path / "x.tiff").exists()


def test_rendering_is_deterministic():
    a = render_slide(label="benign", seed=4, width=512, height=384)
    b = render_slide(label="benign", seed=4, width=512, height=384)
    c = render_slide(label="benign", seed=5, width=512, height=384)
    assert a.shape == (384, 512, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_band_rendering_is_seamless():
    """Rendering goes band by band (memory); the image must not depend on the band height."""
    from duvflow.demo.cohort import _Slide

    a = _Slide(pattern="mixed", seed=4, width=500, height=700, mpp=0.5).render(band=256)
    b = _Slide(pattern="mixed", seed=4, width=500, height=700, mpp=0.5).render(band=90)
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # float summation order only


def test_slide_seed_is_stable_and_distinct():
    assert slide_seed(7, "demo01") == slide_seed(7, "demo01")
    assert len({slide_seed(7, "demo01"), slide_seed(7, "demo02"), slide_seed(8, "demo01")}) == 3
    assert slide_seed(7, "demo01") == 8564193794260946459  # fixed across processes/versions of Python


def test_cohort_plan():
    plan = cohort_plan(12, 7)
    assert list(plan.columns) == ["slide_id", "label", "pattern"]
    assert plan["slide_id"].is_unique and len(plan) == 12
    assert (plan["label"] == "benign").sum() == 6 and (plan["label"] == "malignant").sum() == 6
    assert set(plan.loc[plan["label"] == "benign", "pattern"]) == {"benign"}
    assert set(plan.loc[plan["label"] == "malignant", "pattern"]) == {"malignant", "mixed"}
    for sid in plan["slide_id"]:
        assert "benign" not in sid and "malignant" not in sid and "mixed" not in sid
    pd.testing.assert_frame_equal(plan, cohort_plan(12, 7))
    orders = {tuple(cohort_plan(12, s)["label"]) for s in range(6)}
    assert len(orders) > 1  # the label order follows the seed
    small = cohort_plan(4, 3)
    assert sorted(small["label"]) == ["benign", "benign", "malignant", "malignant"]
    assert (small["pattern"] == "mixed").sum() == 1


def test_cohort_plan_groups_slides_into_patients_with_both_labels():
    plan = cohort_plan(12, 7, slides_per_patient=3)
    pd.testing.assert_frame_equal(plan.drop(columns="patient_id"), cohort_plan(12, 7))  # same slides
    sizes = plan.groupby("patient_id").size()
    assert len(sizes) == 4 and (sizes == 3).all()
    assert (plan.groupby("patient_id")["label"].nunique() == 2).all()  # benign and malignant in turn
    odd = cohort_plan(5, 1, slides_per_patient=2)
    assert sorted(odd.groupby("patient_id").size()) == [1, 2, 2]
    assert "patient_id" not in cohort_plan(4, 3, slides_per_patient=1)


def test_demo_config_rejects_unknown_keys():
    assert DemoConfig.from_dict({"n_slides": 4, "seed": 1}).n_slides == 4
    with pytest.raises(ValueError, match="unknown demo setting"):
        DemoConfig.from_dict({"n_slide": 4})


def test_label_and_pattern_must_agree():
    with pytest.raises(ValueError, match="does not fit"):
        render_slide(label="benign", pattern="mixed", width=128, height=128)
    with pytest.raises(ValueError, match="unknown demo label"):
        render_slide(label="tumour", width=128, height=128)


@pytest.fixture(scope="module")
def class_pairs():
    """Benign and malignant slides rendered with the same seeds (hence the same stain)."""
    return [(render_slide(label="benign", seed=s, width=1024, height=1024, mpp=0.5),
             render_slide(label="malignant", pattern="malignant", seed=s, width=1024, height=1024, mpp=0.5))
            for s in (0, 1)]


def test_fluorescence_look(class_pairs):
    for img in (im for pair in class_pairs for im in pair):
        tissue = _tissue(img)
        assert 0.2 < tissue.mean() < 0.8
        background = img[~tissue].astype(np.float32)
        assert background.mean() < 12  # dark background
        assert img[tissue].mean() > 3 * background.mean()  # bright fluorescent tissue
        corners = np.concatenate([img[:32, :32], img[:32, -32:], img[-32:, :32], img[-32:, -32:]])
        assert corners.mean() < 12  # tissue does not fill the slide
        holes = ~tissue & ndi.binary_fill_holes(tissue)
        assert holes.sum() > 0.005 * tissue.sum()  # lumens, fat, tears inside the tissue
        nuc = _nuclei(img)
        assert 0.05 < nuc.sum() / tissue.sum() < 0.45  # two colours: nuclei and cytoplasm/stroma


def test_classes_differ_in_nuclear_morphology_not_mean_colour(class_pairs):
    for benign, malignant in class_pairs:
        # Mean colour over the tissue area (lumens and fat included, as a patch sees it).
        mb = benign[ndi.binary_fill_holes(_tissue(benign))].astype(np.float64).mean(0)
        mm = malignant[ndi.binary_fill_holes(_tissue(malignant))].astype(np.float64).mean(0)
        np.testing.assert_allclose(mm, mb, rtol=0.1)
        # Comparable amounts of nuclear signal ...
        fb = _nuclei(benign).sum() / _tissue(benign).sum()
        fm = _nuclei(malignant).sum() / _tissue(malignant).sum()
        assert 0.5 < fm / fb < 2.0
        # ... but enlarged nuclei only in the malignant slide.
        lb, lm = _large_nuclear_fraction(benign, 0.5), _large_nuclear_fraction(malignant, 0.5)
        assert lb < 0.25 and lm > 0.4 and lm > 2.5 * lb, (lb, lm)


def test_sizes_scale_with_mpp():
    """Structures are sized in microns: at half the MPP, nuclei span twice the pixels."""
    benign = render_slide(label="benign", seed=1, width=1024, height=1024, mpp=0.25)
    malignant = render_slide(label="malignant", pattern="malignant", seed=1, width=1024, height=1024, mpp=0.25)
    lb, lm = _large_nuclear_fraction(benign, 0.25), _large_nuclear_fraction(malignant, 0.25)
    assert lm > 0.3 and lm > 2.5 * lb, (lb, lm)


def test_write_sheet_round_trip(tmp_path):
    demo = {"enabled": True, "n_slides": 4, "width": 256, "height": 256, "mpp": 0.5, "seed": 3}
    plan = cohort_plan(4, 3)
    slides = []
    for row in plan.itertuples():
        path = tmp_path / "demo" / "slides" / f"{row.slide_id}.tiff"
        make_demo_slide(path, demo=demo, slide_id=row.slide_id, label=row.label, pattern=row.pattern)
        slides.append(path)
    sheet_path = tmp_path / "demo" / "slides.csv"
    write_sheet(sheet_path, slides=slides, demo=demo)
    raw = pd.read_csv(sheet_path)
    assert list(raw.columns[:3]) == ["slide_id", "path", "label"]
    assert not any(p.startswith("/") for p in raw["path"])  # relative to the sheet: the folder can move
    sheet = read_sheet(sheet_path)
    assert list(sheet.index) == sorted(plan["slide_id"])
    assert dict(zip(plan["slide_id"], plan["label"])) == sheet["label"].to_dict()
    for sid, path in sheet["path"].items():
        assert path == str((tmp_path / "demo" / "slides" / f"{sid}.tiff").resolve())
    with pytest.raises(ValueError, match="missing"):
        write_sheet(tmp_path / "other.csv", slides=slides[:3], demo=demo)
    paired = write_sheet(tmp_path / "demo" / "patients.csv", slides=slides, demo={**demo, "slides_per_patient": 2})
    assert list(paired.columns) == ["slide_id", "path", "label", "pattern", "patient_id"]
    assert paired["patient_id"].tolist() == cohort_plan(4, 3, 2)["patient_id"].tolist()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_shared_fixtures(tiny_pyramid_tiff, mpp_less_tiff, tissue_free_tiff, brightfield_png, corrupt_slide,
                         demo_slide_factory):
    with openslide.OpenSlide(str(tiny_pyramid_tiff)) as s:
        assert s.level_count >= 3 and s.dimensions == (1024, 1024)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
    with openslide.OpenSlide(str(mpp_less_tiff)) as s:
        assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert s.level_count >= 3 and openslide.PROPERTY_NAME_MPP_X not in s.properties
    with openslide.OpenSlide(str(tissue_free_tiff)) as s:
        assert np.asarray(s.get_thumbnail((256, 256)).convert("RGB")).max() < 30
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(str(brightfield_png))
    with openslide.open_slide(str(brightfield_png)) as s:
        assert isinstance(s, openslide.ImageSlide) and s.level_count == 1 and s.dimensions == (1200, 1000)
        thumb = np.asarray(s.get_thumbnail((300, 300)).convert("RGB")).astype(int)
        assert thumb[0, 0].min() > 220 and thumb[thumb.shape[0] // 2, thumb.shape[1] // 2, 1] < 200
    with pytest.raises(Exception):  # noqa: B017 - OpenSlide's or PIL's error, both mean unreadable
        openslide.open_slide(str(corrupt_slide))
    a, b = demo_slide_factory("benign", width=512, height=512), demo_slide_factory("benign", width=512, height=512)
    assert a != b and a.read_bytes() == b.read_bytes()
