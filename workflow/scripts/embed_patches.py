"""Rule embed_patches: every patch of every usable slide through the fold's DINO teacher -> parquet."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ssl.embed import embed_patches

with gpu_job(snakemake.resources):
    embed_patches(
        tables=snakemake.input.tables, stores=snakemake.input.stores, statuses=snakemake.input.statuses,
        splits=snakemake.input.splits, fold=snakemake.wildcards.fold, teacher=snakemake.input.teacher,
        teacher_config=snakemake.input.teacher_config, output=snakemake.output.embeddings,
        embed=job_settings(snakemake, "embed"), threads=snakemake.threads,
    )
