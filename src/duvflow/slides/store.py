"""The packed patch store: one HDF5 file per slide, one compressed chunk per patch.

Layout (format version 1)::

    /patches   uint8 (N, S, S, 3)   chunks (1, S, S, 3), compressed
    /coords    int64 (N, 2)         level-0 (x, y) of each patch's top-left corner
    attrs      slide_id, level, patch_size, downsample, mpp, format_version, duvflow_version

Patch ``i`` of the store is row ``i`` (``patch_index``) of the slide's tile table. Readers open the
file lazily so a :class:`PatchStore` can be handed to DataLoader workers (each opens its own handle
after the fork).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

__all__ = ["FORMAT_VERSION", "PatchStore", "PatchStoreWriter"]

FORMAT_VERSION = 1
_COMPRESSION = {"lzf": ("lzf", None), "gzip": ("gzip", 4), "none": (None, None)}


class PatchStoreWriter:
    """Write ``n`` patches of ``patch_size`` pixels into ``path`` (use inside ``io.atomic_path``).

    Chunks are compressed here (``encode``, thread-safe and GIL-free, so callers may compress in
    worker threads) and written with HDF5 direct chunk writes. A patch that does not shrink is stored
    raw with its filter skipped, as HDF5 itself does for optional filters; ``h5py`` reads both alike.

    With ``adaptive`` (default), compression that does not pay is not kept up: after
    ``_FUTILE_RUN`` patches in a row that shrank by less than 10% (noisy images; LZF then costs
    about 40% of an OpenSlide read for nothing), only every ``_FUTILE_RUN``-th patch is tried, until
    one compresses well again. Stored pixels are the same either way.
    """

    _FUTILE_RUN = 16
    _MIN_SAVING = 0.10

    def __init__(self, path: str | os.PathLike, n: int, patch_size: int, *, compression: str = "lzf",
                 attrs: dict | None = None, adaptive: bool = True):
        import h5py

        from duvflow.core.provenance import code_version

        if compression not in _COMPRESSION:
            raise ValueError(f"unknown store compression {compression!r}; use one of {sorted(_COMPRESSION)}")
        codec, level = _COMPRESSION[compression]
        self.compression = compression
        self.patch_size = patch_size
        self._file = h5py.File(path, "w")
        shape = (n, patch_size, patch_size, 3)
        self.patches = self._file.create_dataset(
            "patches", shape=shape, dtype="uint8", chunks=(1, patch_size, patch_size, 3) if n else None,
            compression=codec if n else None, compression_opts=level if n else None,
        )
        self._coords = np.zeros((n, 2), dtype=np.int64)
        self.adaptive = adaptive
        self._futile = 0  # patches in a row that compression did not pay for
        self._calls = 0
        self._file.attrs.update({"format_version": FORMAT_VERSION, "duvflow_version": code_version(),
                                 "patch_size": patch_size, **(attrs or {})})

    def encode(self, patch: np.ndarray) -> tuple[bytes | np.ndarray, int]:
        """The stored bytes of one patch and its HDF5 filter mask (1 = stored raw)."""
        import imagecodecs

        patch = np.ascontiguousarray(patch, dtype=np.uint8)
        if patch.shape != (self.patch_size, self.patch_size, 3):
            raise ValueError(f"patch of shape {patch.shape}, expected {(self.patch_size, self.patch_size, 3)}")
        if self.compression == "none":
            return patch, 0
        # Counters are shared by worker threads without a lock: a race only shifts which patch is
        # probed next, never what is stored.
        self._calls += 1
        if self.adaptive and self._futile >= self._FUTILE_RUN and self._calls % self._FUTILE_RUN:
            return patch, 1
        if self.compression == "lzf":
            data = imagecodecs.lzf_encode(patch)  # the raw LZF stream h5py's lzf filter reads
        else:
            data = imagecodecs.zlib_encode(patch, level=_COMPRESSION["gzip"][1])  # HDF5 deflate = zlib stream
        self._futile = 0 if len(data) <= (1 - self._MIN_SAVING) * patch.nbytes else self._futile + 1
        return (data, 0) if len(data) < patch.nbytes else (patch, 1)

    def write_encoded(self, index: int, data: bytes | np.ndarray, filter_mask: int, xy: tuple[int, int]) -> None:
        self.patches.id.write_direct_chunk((index, 0, 0, 0), data, filter_mask=filter_mask)
        self._coords[index] = xy

    def write(self, index: int, patch: np.ndarray, xy: tuple[int, int]) -> None:
        self.write_encoded(index, *self.encode(patch), xy)

    def close(self) -> None:
        if self._file:
            self._file.create_dataset("coords", data=self._coords)
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PatchStore:
    """Random access to the patches of one slide's store (lazily opened, fork-safe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"patch store {self.path} does not exist")
        self._file = None
        self._pid = None
        with self._open_fresh() as f:
            self._len = int(f["patches"].shape[0])
            self.patch_size = int(f.attrs["patch_size"])
            self.attrs = dict(f.attrs)

    def _open_fresh(self):
        import h5py

        return h5py.File(self.path, "r")

    @property
    def _h5(self):
        # A handle opened before a fork must not be used by the child: reopen per process.
        if self._file is None or self._pid != os.getpid():
            self._file = self._open_fresh()
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> np.ndarray:
        if not -self._len <= index < self._len:
            raise IndexError(f"patch {index} out of range for {self.path} ({self._len} patches)")
        return self._h5["patches"][index]

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        """Patches at ``indices`` (any order, repeats allowed) as one (k, S, S, 3) array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.patch_size, self.patch_size, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            out[j] = self[int(i)]
        return out

    @property
    def coords(self) -> np.ndarray:
        return self._h5["coords"][:]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state
