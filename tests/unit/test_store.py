"""The packed patch store: pixels round-trip exactly, compressed or not."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from duvflow.core.io import atomic_path
from duvflow.slides.reader import open_slide
from duvflow.slides.store import PatchStore, PatchStoreWriter
from duvflow.slides.tiling import tile_slide


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_tiled_store_equals_read_region(tmp_path, tiny_pyramid_tiff, compression):
    out = tmp_path / "out"
    tile_slide(slide=tiny_pyramid_tiff, slide_id="s", label="benign",
               tiling={"patch_size": 96, "store_compression": compression}, tiles=out / "s.parquet",
               store=out / "s.h5", status=out / "s.json", thumbnail=out / "s.png")
    table = pd.read_parquet(out / "s.parquet")
    store = PatchStore(out / "s.h5")
    assert len(store) == len(table) > 5
    assert store.attrs["slide_id"] == "s" and store.patch_size == 96
    with open_slide(tiny_pyramid_tiff) as slide:
        for row in table.itertuples():
            ref = np.asarray(slide._osr.read_region((row.x, row.y), row.level, (row.size, row.size)))
            assert (ref[..., 3] == 255).all()
            assert np.array_equal(store[row.patch_index], ref[..., :3]), row.patch_index
    with h5py.File(out / "s.h5") as f:
        d = f["patches"]
        assert d.chunks == (1, 96, 96, 3)
        if compression != "none":
            # demo tissue compresses: at least some chunks are stored encoded, and smaller
            sizes = [d.id.get_chunk_info(i).size for i in range(d.shape[0])]
            assert sum(sizes) < 0.95 * d.shape[0] * 96 * 96 * 3


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_writer_round_trip_compressible_and_noise(tmp_path, compression):
    rng = np.random.default_rng(0)
    flat = np.zeros((32, 32, 3), np.uint8)
    flat[8:20, 4:30] = (200, 30, 90)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # incompressible: stored raw
    path = tmp_path / "p.h5"
    with PatchStoreWriter(path, 3, 32, compression=compression, attrs={"slide_id": "x"}) as w:
        w.write(0, flat, (0, 0))
        w.write(2, noise, (64, 0))
        w.write(1, flat[::-1].copy(), (32, 0))  # any write order
    store = PatchStore(path)
    assert np.array_equal(store[0], flat) and np.array_equal(store[1], flat[::-1]) and np.array_equal(store[2], noise)
    assert store.coords.tolist() == [[0, 0], [32, 0], [64, 0]]
    assert np.array_equal(store.read_many([2, 0, 2]), np.stack([noise, flat, noise]))
    with h5py.File(path) as f:
        masks = [f["patches"].id.get_chunk_info(i).filter_mask for i in range(3)]
    assert masks == ([0, 0, 1] if compression != "none" else [0, 0, 0])


def test_writer_rejects_wrong_shape_and_codec(tmp_path):
    with PatchStoreWriter(tmp_path / "a.h5", 1, 16) as w, pytest.raises(ValueError, match="shape"):
        w.write(0, np.zeros((16, 16, 4), np.uint8), (0, 0))
    with pytest.raises(ValueError, match="compression"):
        PatchStoreWriter(tmp_path / "b.h5", 1, 16, compression="zip")


def test_empty_store(tmp_path):
    with PatchStoreWriter(tmp_path / "e.h5", 0, 64):
        pass
    store = PatchStore(tmp_path / "e.h5")
    assert len(store) == 0 and store.coords.shape == (0, 2)
    with pytest.raises(IndexError):
        store[0]


def test_store_pickles_without_handle(tmp_path):
    with PatchStoreWriter(tmp_path / "p.h5", 1, 8) as w:
        w.write(0, np.full((8, 8, 3), 7, np.uint8), (0, 0))
    store = PatchStore(tmp_path / "p.h5")
    _ = store[0]  # opens a handle
    clone = pickle.loads(pickle.dumps(store))  # as DataLoader workers receive it
    assert (clone[0] == 7).all()


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp, PatchStoreWriter(tmp, 2, 8) as w:
        w.write(0, np.zeros((8, 8, 3), np.uint8), (0, 0))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_adaptive_compression_stops_trying_when_it_does_not_pay(tmp_path):
    rng = np.random.default_rng(1)

    def poor():  # ~6% zeros: LZF saves a little, not enough to pay for itself
        p = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        p[:2] = 0
        return p

    flat = np.zeros((32, 32, 3), np.uint8)
    patches = [poor() for _ in range(40)] + [flat] * 20
    with PatchStoreWriter(tmp_path / "a.h5", len(patches), 32, compression="lzf") as w:
        for i, p in enumerate(patches):
            w.write(i, p, (i, 0))
    with PatchStoreWriter(tmp_path / "b.h5", len(patches), 32, compression="lzf", adaptive=False) as w:
        for i, p in enumerate(patches):
            w.write(i, p, (i, 0))
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        masks_a = [fa["patches"].id.get_chunk_info(i).filter_mask for i in range(len(patches))]
        masks_b = [fb["patches"].id.get_chunk_info(i).filter_mask for i in range(len(patches))]
    assert masks_b == [0] * len(patches)  # compression always tried (and kept: it shrank a little)
    assert masks_a[:16] == [0] * 16  # tried while it might pay
    assert sum(masks_a[16:40]) >= 20  # then mostly not tried
    assert masks_a[-10:] == [0] * 10  # a probe found compressible patches again
    a, b = PatchStore(tmp_path / "a.h5"), PatchStore(tmp_path / "b.h5")
    assert np.array_equal(a.read_many(range(len(a))), np.stack(patches))
    assert np.array_equal(b.read_many(range(len(b))), np.stack(patches))
