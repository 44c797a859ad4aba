"""Rule train_classifier: the patch classifier of one arm on one fold (GPU when granted), then its
malignancy probability of every patch of the fold's validation and test slides."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.classifier.predict import predict_tiles
from duvflow.classifier.train import train_classifier
from duvflow.core.arms import arm_fraction
from duvflow.gpu import gpu_job

with gpu_job(snakemake.resources) as job:  # gpu > 1: one data-parallel process per card
    job.launch(
        train_classifier,
        tables=snakemake.input.tables, stores=snakemake.input.stores, statuses=snakemake.input.statuses,
        splits=snakemake.input.splits, synthetic=snakemake.input.get("synthetic"), fold=snakemake.wildcards.fold,
        arm=snakemake.wildcards.arm, model_output=snakemake.output.model, meta_output=snakemake.output.meta,
        metrics_output=snakemake.output.metrics, checkpoint_dir=snakemake.params.checkpoint_dir,
        classifier=job_settings(snakemake, "classifier"), tiling=job_settings(snakemake, "tiling"), seed=snakemake.params.seed,
        threads=snakemake.threads, teacher=snakemake.input.get("teacher"),
        # an arm of a fraction sweep (`real+ssl@0.1`): the nested subset of its synthetic set at that share
        synthetic_fraction=arm_fraction(snakemake.wildcards.arm),
    )
    predict_tiles(
        model_dir=snakemake.params.model_dir, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        output=snakemake.output.patches, classifier=job_settings(snakemake, "classifier"), threads=snakemake.threads,
    )
