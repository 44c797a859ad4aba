"""The ``duvflow`` command: what a user runs outside the workflow.

``duvflow predict SLIDE... --model DIR --out DIR`` labels new slides with a trained classifier
(the deployable one: ``results/deploy/<arm>/``, or a classifier folder such as
``results/classifier/<arm>/fold_all/``). It tiles each slide with the settings the model was
trained with and writes ``predictions.csv``, per-slide patch tables and heatmaps; see
:func:`duvflow.classifier.deploy.predict_slides`. Works on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_log = logging.getLogger("duvflow.cli")


EXIT_CODES = """exit codes:
  0  every slide was labelled
  1  some slides could not be labelled (unreadable, no tissue): see predictions.csv and the log
  2  nothing was done: bad arguments or an unusable model folder (the message names the file)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duvflow", description="duvflow: slide-level classification of "
                                     "DUV / whole-slide images with a trained duvflow classifier.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from duvflow import __version__

    parser.add_argument("--version", action="version", version=f"duvflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="label new slides (score, label, heatmap per slide)",
                       description="Tile SLIDEs with the model's tiling settings, predict every patch and "
                                   "write per-slide score (mean patch probability), label (score > theta) and a "
                                   "heatmap of patch probabilities over the slide thumbnail.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (any format OpenSlide reads, or PNG/JPEG/TIFF)")
    p.add_argument("--model", required=True, help="model folder with model.safetensors + model.json "
                   "(results/deploy/<arm>/ or results/classifier/<arm>/fold_all/)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--theta", type=float, default=None,
                   help="slide threshold; default: the theta stored with the model, else 0.2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and tiling")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--heatmap-size", type=int, default=1024, help="longest edge of the heatmap thumbnail")
    p.add_argument("--keep-tiles", action="store_true", help="keep the tile tables and patch stores")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from duvflow.core.runtime import setup_logging

    setup_logging(None)
    if args.command == "predict":
        from duvflow.classifier.deploy import predict_slides

        try:
            table = predict_slides(slides=args.slides, model=args.model, out_dir=args.out, theta=args.theta,
                                   batch_size=args.batch_size, device=args.device, num_workers=args.workers,
                                   threads=args.threads, heatmap_max=args.heatmap_size, keep_tiles=args.keep_tiles)
        except (OSError, ValueError) as err:  # a bad model folder or argument: the message names it
            _log.error("%s", err)
            return 2
        failed = table[table["status"] != "ok"]
        _log.info("wrote %s/predictions.csv: %d slide(s), %d labelled, %d failed", args.out, len(table),
                  len(table) - len(failed), len(failed))
        for _, row in failed.iterrows():
            _log.error("not labelled: %s (%s: %s)", row["path"], row["status"], row["error"])
        return 1 if len(failed) else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
