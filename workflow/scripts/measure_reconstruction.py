"""Rule measure_reconstruction: rFID, PSNR and SSIM of the fold's VAE on held-back patches (the generative floor)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.reconstruction import measure_reconstruction

with gpu_job(snakemake.resources):
    measure_reconstruction(
        vae=snakemake.input.vae, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        image_size=snakemake.params.image_size, output=snakemake.output.report, fidelity=job_settings(snakemake, "fidelity"),
        seed=snakemake.params.seed, threads=snakemake.threads,
    )
