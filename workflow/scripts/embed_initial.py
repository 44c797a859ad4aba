"""Rule embed_initial: every patch through the backbone DINO starts from (the probes' baseline)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ssl.embed import embed_initial

with gpu_job(snakemake.resources):
    embed_initial(
        tables=snakemake.input.tables, stores=snakemake.input.stores, statuses=snakemake.input.statuses,
        output=snakemake.output.embeddings, dino=snakemake.params.dino, embed=job_settings(snakemake, "embed"),
        seed=snakemake.params.seed, threads=snakemake.threads,
    )
