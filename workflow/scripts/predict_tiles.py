"""Rule predict_tiles: malignancy probability of every patch of a fold's validation and test slides."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.classifier.predict import predict_tiles
from duvflow.gpu import gpu_job

with gpu_job(snakemake.resources):
    predict_tiles(
        model_dir=snakemake.params.model_dir, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        output=snakemake.output.patches, classifier=job_settings(snakemake, "classifier"), threads=snakemake.threads,
    )
