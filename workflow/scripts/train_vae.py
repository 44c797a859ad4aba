"""Rule train_vae: the fold's autoencoder (trained on its training patches, or the configured pretrained one),
then every training patch of the fold through it, once (the latent cache of the LDMs)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.train import train_vae
from duvflow.ldm.vae import encode_latents

with gpu_job(snakemake.resources) as job:  # gpu > 1: one data-parallel process per card
    job.launch(
        train_vae,
        tables=snakemake.input.tables, stores=snakemake.input.stores, statuses=snakemake.input.statuses,
        splits=snakemake.input.splits, fold=snakemake.wildcards.fold, output=snakemake.output.vae,
        checkpoint_dir=snakemake.params.checkpoint_dir, vae=job_settings(snakemake, "vae"), seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
    encode_latents(
        vae_model=snakemake.output.vae, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        output=snakemake.output.latents, vae=job_settings(snakemake, "vae"), threads=snakemake.threads,
    )
