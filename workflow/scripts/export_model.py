"""Rule export_model: fold `all`'s theta (aggregation of its validation slides) and the deployable
classifier (fold all) with that theta."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.classifier.deploy import export_model
from duvflow.evaluate.aggregate import aggregate_slides

aggregate_slides(
    patches=snakemake.input.patches, splits=snakemake.input.splits, fold="all", output=snakemake.output.slides,
    theta_output=snakemake.output.theta, aggregate=snakemake.params.aggregate,
)
export_model(
    weights=snakemake.input.model, meta=snakemake.input.meta, theta=snakemake.output.theta,
    output_weights=snakemake.output.model, output_meta=snakemake.output.meta,
)
