"""Rule predict_new_slides: the deployable model on the slides listed in `deploy.slides`."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import untracked_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.classifier.deploy import predict_slides
from duvflow.gpu import gpu_job

with gpu_job(snakemake.resources):
    predict_slides(
        slides=snakemake.input.slides, model=snakemake.params.model_dir, out_dir=snakemake.output.folder,
        batch_size=untracked_settings(snakemake.config, "classifier")["eval_batch_size"], threads=snakemake.threads,
        strict=True,
    )
