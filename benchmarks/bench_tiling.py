"""Tiling throughput and memory on a large pyramidal slide.

Generates a synthetic DUV-like pyramidal TIFF (default 20000 x 20000, deflate, tiled 256, one
top-level page per level, like the demo cohort) in a temporary folder, then, each in a fresh
process so peak RSS is its own:

1. tiles it with ``duvflow.slides.tiling.tile_slide`` (tissue mask, grid, packed store, table, QC);
2. reads the same kept patches with bare ``OpenSlide.read_region`` in the same order.

Prints patches/s for both, their time ratio (target: tiling <= 1.3 x bare read) and the peak RSS
of the tiling process (target: < 1.5 GB; nothing loads level 0 whole)::

    python benchmarks/bench_tiling.py                        # 20000 x 20000, 1 and 2 threads, lzf
    python benchmarks/bench_tiling.py --compression none     # without store compression

CPU seconds are printed too: on a shared machine they are steadier than wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _texture_tiles(rng: np.random.Generator, n: int = 16, t: int = 256) -> list[np.ndarray]:
    """A few DUV-like tiles: red-violet cytoplasm/stroma with blue nuclei and pixel noise."""
    yy, xx = np.mgrid[0:t, 0:t]
    tiles = []
    for _ in range(n):
        base = np.kron(rng.normal(0, 1, (t // 8, t // 8)), np.ones((8, 8)))
        img = np.stack([140 + 30 * base, 60 + 15 * base, 90 + 20 * base], axis=-1).astype(np.float32)
        for _ in range(40):
            cy, cx, r = rng.integers(0, t), rng.integers(0, t), rng.integers(3, 8)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (60, 80, 220)
        img += rng.normal(0, 6, img.shape)
        tiles.append(np.clip(img, 0, 255).astype(np.uint8))
    return tiles


def make_slide(path: Path, size: int, seed: int = 0, mpp: float = 0.5) -> None:
    """Write the benchmark slide tile by tile (memory stays small whatever ``size``)."""
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    tiles = _texture_tiles(rng)
    cell = 64  # level-0 pixels per cell of the tissue shape
    lo = size // cell + 1
    yy, xx = np.mgrid[0:lo, 0:lo] / lo
    field = ndimage.gaussian_filter(rng.normal(0, 1, (lo, lo)), lo / 20) * 8 - ((yy - .5) ** 2 + (xx - .5) ** 2) * 6
    shape = field > np.quantile(field, 0.55)  # irregular blob, ~45% of the slide
    t = 256
    zeros = np.zeros((t, t, 3), np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        lvl, ds = size, 1
        while True:
            n = -(-lvl // t)

            def gen(ds=ds, n=n):
                for ty in range(n):
                    for tx in range(n):
                        ys = np.minimum((np.arange(t) + ty * t) * ds // cell, lo - 1)
                        xs = np.minimum((np.arange(t) + tx * t) * ds // cell, lo - 1)
                        m = shape[np.ix_(ys, xs)]
                        yield tiles[(tx * 7 + ty * 13) % len(tiles)] * m[..., None] if m.any() else zeros

            tw.write(gen(), shape=(lvl, lvl, 3), dtype=np.uint8, tile=(t, t), compression="deflate",
                     photometric="rgb", subfiletype=0 if ds == 1 else 1, resolution=(1e4 / (mpp * ds),) * 2,
                     resolutionunit="CENTIMETER", maxworkers=1)
            if lvl <= 1024:
                break
            lvl, ds = -(-lvl // 2), ds * 2


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_tiling(slide: str, out: str, patch: int, compression: str, threads: int, q) -> None:
    os.environ["DUVFLOW_PROGRESS"] = "0"
    # libraries are imported before the clock starts, as in the bare-read process
    import h5py  # noqa: F401
    import imagecodecs  # noqa: F401
    import openslide  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from PIL import Image  # noqa: F401

    from duvflow.slides.tiling import tile_slide

    for old in Path(out).glob("bench.*"):  # as Snakemake does before a job: no overwriting in place
        old.unlink()

    t0, c0 = time.perf_counter(), time.process_time()
    rec = tile_slide(slide=slide, slide_id="bench", label="benign",
                     tiling={"patch_size": patch, "store_compression": compression},
                     tiles=f"{out}/bench.parquet", store=f"{out}/bench.h5", status=f"{out}/bench.json",
                     thumbnail=f"{out}/bench.png", threads=threads)
    q.put({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "n": rec["n_patches"],
           "candidates": rec["n_candidates"],
           "rss_mb": _peak_rss_mb(), "store_mb": os.path.getsize(f"{out}/bench.h5") / 2**20})


def _run_bare(slide: str, table: str, q) -> None:
    import openslide
    import pandas as pd

    df = pd.read_parquet(table)
    coords = list(zip(df["x"].tolist(), df["y"].tolist(), strict=True))
    level, size = int(df["level"].iloc[0]), int(df["size"].iloc[0])
    s = openslide.OpenSlide(slide)
    t0, c0 = time.perf_counter(), time.process_time()
    for xy in coords:
        s.read_region(xy, level, (size, size))
    q.put({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "n": len(coords),
           "rss_mb": _peak_rss_mb()})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {p.exitcode}")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="level-0 edge of the generated slide (px)")
    ap.add_argument("--patch", type=int, default=400, help="patch edge (px, level 0)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="tile_slide threads to measure")
    ap.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    ap.add_argument("--repeats", type=int, default=2, help="alternating tiling/bare runs; the best of each counts")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the slide and outputs here")
    args = ap.parse_args(argv)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_tiling.")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"slide_{args.size}.tiff"
    if not slide.exists():
        t0 = time.perf_counter()
        make_slide(slide, args.size)
        print(f"generated {args.size}x{args.size} slide in {time.perf_counter() - t0:.1f} s "
              f"({slide.stat().st_size / 2**20:.0f} MiB on disk; level 0 as RGBA would be "
              f"{args.size ** 2 * 4 / 2**30:.1f} GiB)")
    out = args.workdir / "out"
    results = []
    for threads in args.threads:
        tiling, bare = [], []
        for _ in range(args.repeats):
            tiling.append(_in_child(_run_tiling, str(slide), str(out), args.patch, args.compression, threads))
            bare.append(_in_child(_run_bare, str(slide), str(out / "bench.parquet")))
        t = min(tiling, key=lambda r: r["seconds"])
        b = min(bare, key=lambda r: r["seconds"])
        row = {"threads": threads, "compression": args.compression, "patches": t["n"], "candidates": t["candidates"],
               "tiling_s": round(t["seconds"], 2), "tiling_patches_per_s": round(t["n"] / t["seconds"], 1),
               "bare_read_s": round(b["seconds"], 2), "bare_patches_per_s": round(b["n"] / b["seconds"], 1),
               "ratio": round(t["seconds"] / b["seconds"], 3),
               "tiling_cpu_s": round(t["cpu"], 2), "bare_cpu_s": round(b["cpu"], 2),
               "tiling_peak_rss_mb": round(max(r["rss_mb"] for r in tiling)),
               "bare_peak_rss_mb": round(max(r["rss_mb"] for r in bare)), "store_mb": round(t["store_mb"])}
        results.append(row)
        print(f"threads={threads} compression={args.compression}: {row['patches']} of {row['candidates']} patches kept; "
              f"tiling {row['tiling_s']} s ({row['tiling_patches_per_s']} patches/s, incl. thumbnail, mask, table, "
              f"QC); bare read_region {row['bare_read_s']} s ({row['bare_patches_per_s']} patches/s); "
              f"ratio {row['ratio']} (target <= 1.3); CPU s tiling {row['tiling_cpu_s']} / bare "
              f"{row['bare_cpu_s']}; peak RSS tiling {row['tiling_peak_rss_mb']} MB "
              f"(target < 1500), bare {row['bare_peak_rss_mb']} MB; store {row['store_mb']} MB")
    print(json.dumps(results))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
