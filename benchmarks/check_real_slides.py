"""Tile real slides and put their QC thumbnails on one contact sheet, to look at before trusting a cohort.

Give slide files, folders (every slide-like file inside, not recursive) or sample sheets
(``samples.csv`` with ``slide_id,path``; paths relative to the sheet)::

    python benchmarks/check_real_slides.py ../shared/data/dev-he/samples.csv ../shared/data/real-wsi \\
        --out /tmp/check --patch-size 224

Each slide is tiled with ``duvflow.slides.tiling.tile_slide`` (the tiling config's defaults, with
``--patch-size``, ``--background`` and ``--set key=value`` on top) into ``--out``; then the
cohort QC (``qc/cohort.tsv``, ``qc/cohort.png``, with its flags) is written and
``contact_sheet.png`` shows every QC thumbnail (tissue mask green, outline yellow, small fragments
ringed, pen ink magenta, kept patches cyan). A per-slide summary is printed: mode and how it was
chosen, whether background was found, tissue fraction, kept and filtered patches, cohort flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

import yaml

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".png",
                  ".jpg", ".jpeg", ".qptiff", ".dcm"}


def find_slides(paths: list[str]) -> list[tuple[str, Path]]:
    """(slide id, path) for every slide named by ``paths`` (files, folders, sample sheets)."""
    found: list[tuple[str, Path]] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            sheet = p / "samples.csv"
            if sheet.exists():
                found.extend(_from_sheet(sheet))
            else:
                found.extend((f.stem.split(".")[0], f) for f in sorted(p.iterdir())
                             if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES)
        elif p.suffix.lower() in (".csv", ".tsv"):
            found.extend(_from_sheet(p))
        else:
            found.append((p.stem.split(".")[0], p))
    ids = [sid for sid, _ in found]
    if len(set(ids)) != len(ids):  # the same stem in two folders: make the ids unique
        found = [(f"{sid}-{i}", path) for i, (sid, path) in enumerate(found)]
    return found


def _from_sheet(sheet: Path) -> list[tuple[str, Path]]:
    with sheet.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t" if sheet.suffix == ".tsv" else ","))
    return [(r["slide_id"], (sheet.parent / r["path"]).resolve()) for r in rows]


def contact_sheet(thumbnails: list[Path], target: Path, *, width: int = 520, columns: int = 4) -> None:
    from PIL import Image

    tiles = []
    for path in thumbnails:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((width, 10 * width))
            tiles.append(img)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (columns * (width + 8) + 8, sum(heights) + 8 * (len(rows) + 1)), (90, 90, 90))
    y = 8
    for row, h in zip(rows, heights, strict=True):
        for j, tile in enumerate(row):
            sheet.paste(tile, (8 + j * (width + 8), y))
        y += h + 8
    sheet.save(target)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="slide files, folders or sample sheets")
    ap.add_argument("--out", type=Path, required=True, help="output folder (tiles/, qc/, contact_sheet.png)")
    ap.add_argument("--patch-size", type=int, default=224, help="tiling.patch_size (default 224)")
    ap.add_argument("--background", default="auto", choices=["auto", "bright", "dark"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other tiling setting (YAML value), e.g. --set min_tissue_fraction=0.3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DUVFLOW_PROGRESS", "0")

    from duvflow.slides.qc import qc_cohort
    from duvflow.slides.tiling import tile_slide

    config = {"patch_size": args.patch_size, "background": args.background, "on_bad_slide": "skip"}
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    slides = find_slides(args.paths)
    if not slides:
        print("no slides found", file=sys.stderr)
        return 2
    tiles, qc = args.out / "tiles", args.out / "qc"
    statuses, thumbs = [], []
    for sid, path in slides:
        rec = tile_slide(slide=path, slide_id=sid, label="unknown", tiling=config, tiles=tiles / f"{sid}.parquet",
                         store=tiles / f"{sid}.h5", status=tiles / f"{sid}.json",
                         thumbnail=qc / "thumbnails" / f"{sid}.png", threads=args.threads)
        statuses.append(tiles / f"{sid}.json")
        thumbs.append(qc / "thumbnails" / f"{sid}.png")
        if rec["status"] == "skipped":
            print(f"{sid}: skipped: {rec['reason']}")
    df = qc_cohort(status=statuses, table=qc / "cohort.tsv", plot=qc / "cohort.png")
    contact_sheet(thumbs, args.out / "contact_sheet.png")
    print(f"{'slide':<34} {'mode':<6} {'bg found':<8} {'tissue':>7} {'kept':>5} {'qc-drop':>7}  how chosen / flags")
    for sid, _ in slides:
        rec = json.loads((tiles / f"{sid}.json").read_text())
        row = df.set_index("slide_id").loc[sid]
        dropped = rec["n_filtered_background"] + rec["n_filtered_focus"] + rec["n_filtered_pen"]
        tissue = f"{100 * rec['tissue_fraction']:.1f}%" if rec["tissue_fraction"] is not None else "-"
        print(f"{sid:<34} {rec['background'] or '-':<6} {rec['background_found']!s:<8} {tissue:>7} "
              f"{rec['n_patches']:>5} {dropped:>7}  {rec['background_method'] or rec['reason']}"
              + (f" | FLAGS: {row['flags']}" if row["flags"] else ""))
    print(f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
