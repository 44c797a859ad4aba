"""Rule train_ldm: the fold's latent diffusion model for one conditioning (ssl or class)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.train import train_ldm

with gpu_job(snakemake.resources) as job:  # gpu > 1: one data-parallel process per card
    job.launch(
        train_ldm,
        latents=snakemake.input.latents, vae=snakemake.input.vae, embeddings=snakemake.input.get("embeddings"),
        output=snakemake.output.model, checkpoint_dir=snakemake.params.checkpoint_dir,
        condition=snakemake.wildcards.cond, fold=snakemake.wildcards.fold, ldm=job_settings(snakemake, "ldm"),
        seed=snakemake.params.seed, threads=snakemake.threads,
    )
