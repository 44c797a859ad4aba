"""Slide reading and tiling: patch grid, tissue fractions, outputs per contract, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from duvflow.demo.cohort import write_pyramid_tiff
from duvflow.slides.reader import (
    MissingMPPError,
    SlideReadError,
    _mpp_from_properties,
    available_memory,
    open_slide,
)
from duvflow.slides.store import PatchStore
from duvflow.slides.tiling import TABLE_COLUMNS, TilingConfig, patch_grid, tile_slide, tissue_fractions


def _tile(tmp_path, slide, name="s1", label="benign", threads=1, **cfg):
    out = tmp_path / "out"
    paths = {k: out / f"{name}.{ext}" for k, ext in
             (("tiles", "parquet"), ("store", "h5"), ("status", "json"), ("thumbnail", "png"))}
    rec = tile_slide(slide=slide, slide_id=name, label=label, tiling=cfg, threads=threads, **paths)
    return rec, paths


def _square_slide(path, size=(1000, 700), box=(100, 100, 700, 500), mpp=0.5, tissue=(170, 60, 190)):
    """Dark slide with one bright rectangle of tissue (x0, y0, x1, y1), as a pyramidal TIFF."""
    w, h = size
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal([6, 6, 9], 1.5, (h, w, 3)), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = np.clip(rng.normal(tissue, 12, (y1 - y0, x1 - x0, 3)), 0, 255).astype(np.uint8)
    return write_pyramid_tiff(path, img, mpp)


# ---------------------------------------------------------------------------------------- config


def test_config_defaults_and_unknown_keys():
    cfg = TilingConfig.from_dict({})
    assert (cfg.level, cfg.patch_size, cfg.background, cfg.store_compression) == (0, 400, "auto", "lzf")
    with pytest.raises(ValueError, match="unknown tiling setting.*patchsize"):
        TilingConfig.from_dict({"patchsize": 256})
    with pytest.raises(ValueError, match="background.*on_bad_slide"):
        TilingConfig.from_dict({"background": "grey", "on_bad_slide": "ignore"})
    with pytest.raises(ValueError, match="min_tissue_fraction"):
        TilingConfig.from_dict({"min_tissue_fraction": 1.5})


# ------------------------------------------------------------------------------------------ reader


def test_mpp_from_properties():
    assert _mpp_from_properties({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.26"}, "x")[0] == (0.25, 0.26)
    mpp, source = _mpp_from_properties({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "50800",
                                        "tiff.YResolution": "50800"}, "x")
    assert mpp == pytest.approx((0.5, 0.5)) and "inch" in source
    assert _mpp_from_properties({"tiff.ResolutionUnit": "none", "tiff.XResolution": "1"}, "x") == (None, None)
    # 72 dpi is a placeholder, not a microscope (352 um/px)
    assert _mpp_from_properties({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "72",
                                 "tiff.YResolution": "72"}, "x") == (None, None)


def test_reader_pyramid_and_mpp(tiny_pyramid_tiff, mpp_less_tiff):
    with open_slide(tiny_pyramid_tiff) as s:
        assert s.kind == "openslide" and s.level_count >= 3
        assert s.mpp == pytest.approx(0.5)
        patch = s.read_rgb((100, 200), 1, (64, 32))
        assert patch.shape == (32, 64, 3) and patch.dtype == np.uint8
    with open_slide(mpp_less_tiff) as s:
        assert s.mpp is None and s.mpp_source is None


def test_thumbnail_geometry_non_integer_factor(tmp_path):
    path = _square_slide(tmp_path / "s.tiff", size=(1000, 700), box=(100, 200, 700, 500))
    with open_slide(path) as s:
        rgba, ds = s.thumbnail(300)  # factor 3.33: built from level 1 (downsample 2), box-filtered
    assert rgba.shape == (210, 300, 4) and ds == pytest.approx(1000 / 300)
    bright = rgba[..., :3].max(-1) > 90
    ys, xs = np.nonzero(bright)
    assert abs(xs.min() - 100 / ds) <= 1 and abs(xs.max() + 1 - 700 / ds) <= 1
    assert abs(ys.min() - 200 / ds) <= 1 and abs(ys.max() + 1 - 500 / ds) <= 1
    assert (rgba[..., 3] == 255).all()


def test_reader_composites_transparent_pixels(tmp_path):
    rgba = np.zeros((64, 80, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    rgba[:, 40:, 3] = 0  # right half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with open_slide(path) as s:
        assert s.kind == "image"
        out = s.read_rgb((0, 0), 0, (80, 64), fill=(1, 2, 3))
        assert (out[:, :40] == (200, 100, 50)).all() and (out[:, 40:] == (1, 2, 3)).all()
        # beyond the image's bounds OpenSlide returns transparent pixels: composited too
        beyond = s.read_rgb((60, 50), 0, (40, 40), fill=(9, 9, 9))
        assert (beyond == 9).all()


def test_reader_plain_image_modes(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((50, 60), 77, np.uint8), "L").save(grey)
    with open_slide(grey) as s:
        assert (s.read_rgb((0, 0), 0, (10, 10)) == 77).all()
    odd = tmp_path / "odd.tiff"
    tifffile.imwrite(odd, np.zeros((5, 50, 60), np.uint16), photometric="minisblack")  # 5 channels: which 3?
    with pytest.raises(SlideReadError, match=r"odd\.tiff.*shape \(5, 50, 60\)"):
        open_slide(odd)


def _fluorescence_12bit(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A 12-bit camera image in a 16-bit container: dark background, a bright tissue square."""
    rng = np.random.default_rng(seed)
    img = rng.normal([60, 50, 80], 10, (h, w, 3))
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.normal([2600, 1100, 2000], 300, (h // 2, w // 2, 3))
    return np.clip(img, 0, 4095).astype(np.uint16)


@pytest.mark.parametrize("layout", ["rgb16_tiff", "planar16_tiff", "grey16_png", "float_tiff"])
def test_high_depth_plain_images_are_rescaled_to_8_bits(tmp_path, layout, caplog):
    img = _fluorescence_12bit(120, 160)
    path = tmp_path / f"{layout}.{'png' if 'png' in layout else 'tiff'}"
    if layout == "rgb16_tiff":
        tifffile.imwrite(path, img)
    elif layout == "planar16_tiff":
        tifffile.imwrite(path, np.moveaxis(img, -1, 0).copy(), photometric="minisblack")
    elif layout == "grey16_png":
        Image.fromarray(img[..., 0]).save(path)  # PIL mode I;16
    else:
        tifffile.imwrite(path, img.astype(np.float32) / 4095, photometric="rgb")
    with open_slide(path) as s:
        rgb = s.read_rgb((0, 0), 0, (160, 120))
    assert rgb.dtype == np.uint8 and rgb.shape == (120, 160, 3)
    # 12-bit data fills the 8-bit range: neither the high byte (dark) nor clipped flat
    tissue, glass = rgb[40:80, 50:110], rgb[:20, :20]
    assert tissue.mean() > 120 and glass.mean() < 30 and tissue.std() > 5
    if layout != "grey16_png":  # one range for all channels: the colour balance survives
        assert tissue[..., 0].mean() > tissue[..., 2].mean() > tissue[..., 1].mean()
    assert "rescaled to 8 bits" in caplog.text and path.name in caplog.text


def test_tiled_16_bit_tiff_is_rescaled_unless_too_large(tmp_path, monkeypatch):
    # OpenSlide opens a tiled 16-bit TIFF but keeps only the high byte: 12-bit data comes out black
    path = tmp_path / "tiled16.tiff"
    tifffile.imwrite(path, _fluorescence_12bit(300, 400), tile=(256, 256), resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert s.kind == "image" and s.mpp_xy == pytest.approx((0.5, 0.5))
        assert s.read_rgb((100, 80), 0, (200, 140)).mean() > 120
    monkeypatch.setattr("duvflow.slides.reader.available_memory", lambda: 1 << 20)
    with open_slide(path) as s:
        assert s.kind == "openslide" and s.read_rgb((100, 80), 0, (200, 140)).mean() < 16
        assert any("high 8 bits" in note for note in s.notes)


@pytest.mark.parametrize(("fmt", "save", "expected"), [
    ("tiff", {"resolution": (2e4, 2e4), "resolutionunit": "CENTIMETER"}, (0.5, 0.5)),  # 20000 px/cm
    ("png", {"dpi": (101600, 50800)}, (0.25, 0.5)),  # pHYs, stored in px/m
    ("jpg", {"dpi": (72, 72)}, None),  # a placeholder density, not a microscope
    ("png", {}, None),
])
def test_plain_image_resolution_gives_mpp(tmp_path, fmt, save, expected):
    img = np.full((40, 50, 3), 200, np.uint8)
    path = tmp_path / f"plain.{fmt}"
    if fmt == "tiff":
        tifffile.imwrite(path, img, **save)  # stripped: OpenSlide refuses it, PIL reads it
    else:
        Image.fromarray(img).save(path, **save)
    with open_slide(path) as s:
        assert s.kind == "image"
        if expected is None:
            assert s.mpp_xy is None
        else:
            assert s.mpp_xy == pytest.approx(expected, rel=1e-3)


def test_high_depth_fluorescence_is_tiled_like_an_8_bit_one(tmp_path):
    path = tmp_path / "duv_16bit.tiff"
    tifffile.imwrite(path, _fluorescence_12bit(800, 800, seed=1))
    rec, p = _tile(tmp_path, path, patch_size=100)
    assert rec["status"] == "ok" and rec["background"] == "dark"
    assert "uint16 pixels rescaled to 8 bits" in rec["problems"]  # shown in the cohort QC table
    table = pd.read_parquet(p["tiles"])
    # the bright square is [200, 600) in both axes: exactly its 4 x 4 patches are kept
    assert sorted(zip(table["x"], table["y"])) == [(x, y) for x in range(200, 600, 100) for y in range(200, 600, 100)]


def test_large_plain_images_are_not_refused_by_the_pixel_limit(tmp_path, brightfield_png, monkeypatch):
    # PIL refuses images above 2 x MAX_IMAGE_PIXELS as "decompression bombs"; real scans exceed it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with open_slide(brightfield_png) as s:
        assert s.dimensions == (1200, 1000)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_plain_image_too_large_for_memory_names_file_and_remedy(tmp_path, brightfield_png, monkeypatch):
    monkeypatch.setattr("duvflow.slides.reader.available_memory", lambda: 1 << 20)
    with pytest.raises(SlideReadError, match=r"brightfield\.png.*1200x1000.*GiB available.*pyramidal TIFF"):
        open_slide(brightfield_png)


def test_available_memory_is_plausible():
    free = available_memory()
    assert free is None or 1 << 20 < free < 1 << 50


@pytest.mark.parametrize("content", [b"", b"II*\x00" + bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                                     b"hello, I am a text file\n"])
def test_corrupt_file_error_names_file(tmp_path, content):
    path = tmp_path / "broken_slide.tiff"
    path.write_bytes(content)
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    assert "broken_slide.tiff" in str(err.value) and err.value.reason


def test_truncated_png(tmp_path, brightfield_png):
    data = brightfield_png.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"cut\.png.*(corrupt|truncated)"):
        open_slide(cut)


def test_missing_file(tmp_path):
    with pytest.raises(SlideReadError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")


# -------------------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("level", [0, 1, 2])
def test_patch_grid_non_overlapping_inside_bounds(tmp_path, level):
    path = _square_slide(tmp_path / "s.tiff", size=(1001, 703))
    with open_slide(path) as s:
        grid = patch_grid(s, level, 64)
        w0, h0 = s.dimensions
        lw, lh = s.level_dimensions[level]
    assert (lw // 64 - 1) * (lh // 64 - 1) <= len(grid) <= (lw // 64) * (lh // 64)
    assert len(grid) > 0
    assert grid.size_level0 == round(64 * grid.downsample)
    assert (grid.x >= 0).all() and (grid.y >= 0).all()
    assert (grid.x + grid.size_level0 <= w0).all() and (grid.y + grid.size_level0 <= h0).all()
    # pairwise disjoint boxes, in row-major order
    xs, ys, e = grid.x, grid.y, grid.size_level0
    overlap = ((xs[:, None] < xs[None] + e) & (xs[None] < xs[:, None] + e)
               & (ys[:, None] < ys[None] + e) & (ys[None] < ys[:, None] + e))
    assert overlap.sum() == len(xs)  # only each box with itself
    order = np.lexsort((xs, ys))
    assert (order == np.arange(len(xs))).all()


def test_patch_grid_missing_level(tiny_pyramid_tiff):
    with open_slide(tiny_pyramid_tiff) as s, pytest.raises(SlideReadError, match="level 9 does not exist"):
        patch_grid(s, 9, 64)


@pytest.mark.parametrize("scale", [1.0, 0.25, 0.37])
def test_tissue_fractions_exact(scale):
    rng = np.random.default_rng(2)
    # a level-0 mask, its downsampled version at `scale` is what the tiler sees; compare with brute force
    mask = rng.random((40, 50)) > 0.5
    size0 = 24
    xs, ys = np.meshgrid(np.arange(0, 50 / scale - size0, 7), np.arange(0, 40 / scale - size0, 5))
    xs, ys = xs.ravel().astype(np.int64), ys.ravel().astype(np.int64)
    got = tissue_fractions(mask, (scale, scale), xs, ys, size0)
    fine = 100  # integrate on a fine sub-grid of level-0 pixels
    for x, y, f in zip(xs[:30], ys[:30], got[:30], strict=True):
        px = x + (np.arange(size0 * fine) + 0.5) / fine
        py = y + (np.arange(size0 * fine) + 0.5) / fine
        cols = np.minimum((px * scale).astype(int), 49)
        rows = np.minimum((py * scale).astype(int), 39)
        sub_x = mask[:, cols].mean(axis=1)  # per mask row, the fraction covered along x
        expected = sub_x[rows].mean()
        assert f == pytest.approx(expected, abs=2e-3)


# ------------------------------------------------------------------------------------- tile_slide


def test_tile_slide_outputs_follow_contract(tmp_path):
    path = _square_slide(tmp_path / "s.tiff")  # tissue x 100..700, y 100..500
    rec, p = _tile(tmp_path, path, label="malignant", patch_size=100, min_tissue_fraction=0.5)
    assert rec["status"] == "ok" and rec["background"] == "dark"
    table = pd.read_parquet(p["tiles"])
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert (table["patch_index"] == np.arange(len(table))).all()
    assert (table["slide_id"] == "s1").all() and (table["label"] == "malignant").all()
    assert (table["size"] == 100).all() and (table["size_level0"] == 100).all() and (table["level"] == 0).all()
    # exactly the grid cells inside the tissue rectangle
    assert len(table) == 6 * 4 == rec["n_patches"]
    assert set(zip(table["x"], table["y"], strict=True)) == {(x, y) for x in range(100, 700, 100)
                                                              for y in range(100, 500, 100)}
    assert (table["tissue_fraction"] >= 0.5).all()
    status = json.loads(p["status"].read_text())
    for key in ("slide_id", "status", "reason", "n_patches", "background", "tissue_area_mm2", "mpp"):
        assert key in status
    assert status["mpp"] == pytest.approx(0.5)
    assert status["tissue_area_mm2"] == pytest.approx(600 * 400 * 0.25 / 1e6, rel=0.03)
    store = PatchStore(p["store"])
    assert len(store) == len(table)
    assert (store.coords == table[["x", "y"]].to_numpy()).all()
    with Image.open(p["thumbnail"]) as qc:
        assert qc.format == "PNG" and qc.width >= 640


def test_kept_patches_reach_threshold_and_dropped_ones_do_not(tmp_path, demo_slide_factory):
    path = demo_slide_factory("benign", width=1024, height=1024, seed=3)
    rec, p = _tile(tmp_path, path, patch_size=128, min_tissue_fraction=0.6)
    table = pd.read_parquet(p["tiles"])
    assert rec["status"] == "ok" and 0 < len(table) < rec["n_candidates"]
    assert (table["tissue_fraction"] >= 0.6).all()
    # recompute every candidate's fraction from the same mask: none of the dropped reaches it
    from duvflow.slides.tissue import detect_tissue

    with open_slide(path) as s:
        rgba, _ = s.thumbnail(TilingConfig().thumbnail_max)
        grid = patch_grid(s, 0, 128)
    tissue = detect_tissue(rgba[..., :3], rgba[..., 3] >= 128)
    h, w = tissue.mask.shape
    fr = tissue_fractions(tissue.mask, (w / 1024, h / 1024), grid.x, grid.y, grid.size_level0)
    kept = set(zip(table["x"], table["y"], strict=True))
    for x, y, f in zip(grid.x, grid.y, fr, strict=True):
        assert ((x, y) in kept) == (f >= 0.6)


def test_level_one_tiling(tmp_path, tiny_pyramid_tiff):
    rec, p = _tile(tmp_path, tiny_pyramid_tiff, level=1, patch_size=64)
    table = pd.read_parquet(p["tiles"])
    assert rec["status"] == "ok" and len(table) > 0
    assert (table["level"] == 1).all() and (table["size"] == 64).all() and (table["size_level0"] == 128).all()
    assert (table["x"] % 128 == 0).all() and (table["y"] % 128 == 0).all()
    assert PatchStore(p["store"]).patch_size == 64


def test_missing_level_is_a_clear_error(tmp_path, tiny_pyramid_tiff):
    with pytest.raises(SlideReadError, match="level 7 does not exist"):
        _tile(tmp_path, tiny_pyramid_tiff, level=7)


def test_patch_um_uses_mpp(tmp_path, tiny_pyramid_tiff):
    rec, p = _tile(tmp_path, tiny_pyramid_tiff, patch_um=64.0)  # 64 um at 0.5 um/px = 128 px
    assert rec["patch_size"] == 128 and rec["mpp_source"] == "openslide.mpp"
    assert (pd.read_parquet(p["tiles"])["size"] == 128).all()


def test_patch_um_without_mpp_fails_clearly(tmp_path, mpp_less_tiff):
    with pytest.raises(MissingMPPError, match=r"no_mpp\.tiff.*patch_um.*default_mpp"):
        _tile(tmp_path, mpp_less_tiff, patch_um=64.0)
    assert not (tmp_path / "out" / "s1.json").exists()


def test_patch_um_with_default_mpp(tmp_path, mpp_less_tiff):
    rec, _p = _tile(tmp_path, mpp_less_tiff, patch_um=64.0, default_mpp=0.25)
    assert rec["patch_size"] == 256 and rec["mpp_source"] == "default_mpp" and rec["mpp"] == 0.25
    assert any("default_mpp" in problem for problem in rec["problems"])


def test_no_mpp_reports_area_in_pixels(tmp_path, mpp_less_tiff):
    rec, _ = _tile(tmp_path, mpp_less_tiff, patch_size=128)
    assert rec["status"] == "ok" and rec["mpp"] is None and rec["tissue_area_mm2"] is None
    assert rec["tissue_area_px"] > 0 and "no MPP metadata" in rec["problems"]


def test_plain_png_brightfield(tmp_path, brightfield_png):
    rec, p = _tile(tmp_path, brightfield_png, patch_size=100)
    assert rec["status"] == "ok" and rec["background"] == "bright" and rec["vendor"] == "image"
    table = pd.read_parquet(p["tiles"])
    assert len(table) > 10
    # background fill and patches come from the white slide: the kept patches are tissue, not glass
    store = PatchStore(p["store"])
    assert store.read_many(range(len(store))).mean() < 225


def test_corrupt_slide_fail_mode_names_file(tmp_path, corrupt_slide):
    with pytest.raises(SlideReadError, match=str(corrupt_slide.name)):
        _tile(tmp_path, corrupt_slide)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even a temp file


def test_corrupt_slide_skip_mode(tmp_path, corrupt_slide, caplog):
    rec, p = _tile(tmp_path, corrupt_slide, on_bad_slide="skip")
    assert rec["status"] == "skipped" and rec["n_patches"] == 0 and rec["reason"]
    assert "skipping" in caplog.text
    table = pd.read_parquet(p["tiles"])
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == 0
    assert len(PatchStore(p["store"])) == 0
    assert json.loads(p["status"].read_text())["status"] == "skipped"
    with Image.open(p["thumbnail"]) as qc:
        assert qc.size[0] > 0
    # only the four outputs, no temporary leftovers
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["s1.h5", "s1.json", "s1.parquet", "s1.png"]


def _corrupt_tile(path):
    """Overwrite one level-0 tile's compressed bytes inside the tissue with garbage."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        i = 2 * per_row + 2  # tile row 2, column 2
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = np.random.default_rng(0).bytes(count)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_corrupt_tile_mid_slide(tmp_path, threads):
    path = _corrupt_tile(_square_slide(tmp_path / "bad_tile.tiff", size=(1024, 1024), box=(100, 100, 900, 900)))
    with pytest.raises(SlideReadError, match=r"bad_tile\.tiff.*reading"):
        _tile(tmp_path / "fail", path, patch_size=128, threads=threads)
    assert not (tmp_path / "fail" / "out").exists() or not any((tmp_path / "fail" / "out").iterdir())
    rec, p = _tile(tmp_path / "skip", path, patch_size=128, on_bad_slide="skip", threads=threads)
    assert rec["status"] == "skipped" and "failed" in rec["reason"]
    assert len(PatchStore(p["store"])) == 0 and len(pd.read_parquet(p["tiles"])) == 0
    assert sorted(f.name for f in p["store"].parent.iterdir()) == ["s1.h5", "s1.json", "s1.parquet", "s1.png"]


def test_skip_mode_also_covers_missing_mpp(tmp_path, mpp_less_tiff):
    rec, _ = _tile(tmp_path, mpp_less_tiff, patch_um=100.0, on_bad_slide="skip")
    assert rec["status"] == "skipped" and "MPP" in rec["reason"]


def test_zero_tissue_is_recorded(tmp_path, tissue_free_tiff):
    rec, p = _tile(tmp_path, tissue_free_tiff, patch_size=128)
    assert rec["status"] == "no_tissue" and rec["n_patches"] == 0 and "tissue" in rec["reason"]
    assert len(pd.read_parquet(p["tiles"])) == 0 and len(PatchStore(p["store"])) == 0
    assert p["thumbnail"].exists()


def test_slide_smaller_than_a_patch(tmp_path):
    path = _square_slide(tmp_path / "small.tiff", size=(300, 300), box=(0, 0, 300, 300))
    rec, _ = _tile(tmp_path, path, patch_size=400)
    assert rec["status"] == "no_tissue" and "fits" in rec["reason"]


def test_threads_give_identical_store(tmp_path, tiny_pyramid_tiff):
    _, p1 = _tile(tmp_path / "a", tiny_pyramid_tiff, patch_size=128, threads=1)
    _, p2 = _tile(tmp_path / "b", tiny_pyramid_tiff, patch_size=128, threads=3)
    a, b = PatchStore(p1["store"]), PatchStore(p2["store"])
    assert len(a) == len(b) > 0
    assert np.array_equal(a.read_many(range(len(a))), b.read_many(range(len(b))))
    assert pd.read_parquet(p1["tiles"]).equals(pd.read_parquet(p2["tiles"]))


# ------------------------------------------------------------------------------------------ cohort QC


def test_cohort_qc_table_and_plot(tmp_path, tiny_pyramid_tiff, tissue_free_tiff, corrupt_slide, mpp_less_tiff):
    from duvflow.slides.qc import QC_COLUMNS, qc_cohort

    statuses = []
    for name, slide, label in (("ok1", tiny_pyramid_tiff, "malignant"), ("empty", tissue_free_tiff, "benign"),
                               ("broken", corrupt_slide, "benign"), ("nompp", mpp_less_tiff, "benign")):
        _, p = _tile(tmp_path, slide, name=name, label=label, patch_size=128, on_bad_slide="skip")
        statuses.append(p["status"])
    df = qc_cohort(status=statuses, table=tmp_path / "qc" / "cohort.tsv", plot=tmp_path / "qc" / "cohort.png")
    tsv = pd.read_csv(tmp_path / "qc" / "cohort.tsv", sep="\t", keep_default_na=False)
    assert list(tsv.columns) == list(QC_COLUMNS) and len(tsv) == 4
    rows = tsv.set_index("slide_id")
    assert rows.loc["broken", "status"] == "skipped" and rows.loc["broken", "problems"].startswith("skipped:")
    assert rows.loc["empty", "status"] == "no_tissue" and rows.loc["empty", "n_patches"] == 0
    assert rows.loc["ok1", "status"] == "ok" and rows.loc["ok1", "n_patches"] > 0
    assert rows.loc["ok1", "background"] == "dark" and float(rows.loc["ok1", "tissue_area_mm2"]) > 0
    assert rows.loc["nompp", "tissue_area_mm2"] == "" and "no MPP metadata" in rows.loc["nompp", "problems"]
    assert int(df["n_patches"].sum()) == int(tsv["n_patches"].sum())
    with Image.open(tmp_path / "qc" / "cohort.png") as img:
        assert img.format == "PNG" and img.width > 300
