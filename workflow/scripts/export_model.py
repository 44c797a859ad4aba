"""Rule export_model: the deployable classifier (fold all) with its slide threshold."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.classifier.deploy import export_model

export_model(
    weights=snakemake.input.model, meta=snakemake.input.meta, theta=snakemake.input.theta,
    output_weights=snakemake.output.model, output_meta=snakemake.output.meta,
)
