"""Rule aggregate_slides: per fold of one arm, slide scores, the fold's theta (fixed and auto) and
slide predictions."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.aggregate import aggregate_folds

aggregate_folds(
    patches=snakemake.input.patches, splits=snakemake.input.splits, folds=snakemake.params.folds,
    outputs=snakemake.output.slides, theta_outputs=snakemake.output.theta,
    aggregate=snakemake.params.aggregate,
)
