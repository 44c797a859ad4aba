"""Rule compare_arms: the results table (arms as rows) in CSV and Markdown, and the arms' ROC curves."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.evaluation import compare_arms

compare_arms(
    metrics=snakemake.input.metrics, pooled_slides=snakemake.input.slides, arms=snakemake.params.arms,
    fid=snakemake.params.fid, table=snakemake.output.table, markdown=snakemake.output.markdown,
    roc_plot=snakemake.output.roc, aggregate=snakemake.params.aggregate,
)
