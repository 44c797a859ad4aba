"""Rule sample_ldm: the synthetic patch folder of one conditioning and fold (guided DDIM)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.sample import sample_synthetic

with gpu_job(snakemake.resources):
    sample_synthetic(
        model=snakemake.input.model, vae=snakemake.input.vae, latents=snakemake.input.latents,
        embeddings=snakemake.input.get("embeddings"), output=snakemake.output.synthetic,
        condition=snakemake.wildcards.cond, fold=snakemake.wildcards.fold, sampling=job_settings(snakemake, "sampling"),
        seed=snakemake.params.seed, guidance=snakemake.wildcards.get("guidance"), threads=snakemake.threads,
    )
