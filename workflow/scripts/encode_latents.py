"""Rule encode_latents: every training patch of the fold through the frozen VAE, once (latent cache)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.vae import encode_latents

with gpu_job(snakemake.resources):
    encode_latents(
        vae_model=snakemake.input.vae, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        output=snakemake.output.latents, vae=job_settings(snakemake, "vae"), threads=snakemake.threads,
    )
