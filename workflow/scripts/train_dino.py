"""Rule train_dino: DINO fine-tuning on one fold's training slides (GPU when granted; resumable)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ssl.train import train_dino

with gpu_job(snakemake.resources) as job:  # gpu > 1: one data-parallel process per card
    job.launch(
        train_dino,
        tables=snakemake.input.tables, stores=snakemake.input.stores, statuses=snakemake.input.statuses,
        splits=snakemake.input.splits, fold=snakemake.wildcards.fold, teacher=snakemake.output.teacher,
        teacher_config=snakemake.output.teacher_config, metrics=snakemake.output.metrics,
        plot=snakemake.output.plot, dino=job_settings(snakemake, "dino"), seed=snakemake.params.seed,
        checkpoint_dir=snakemake.params.checkpoint_dir, threads=snakemake.threads,
    )
