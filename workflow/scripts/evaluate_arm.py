"""Rule evaluate_arm: pooled and per-fold slide metrics of one arm with bootstrap CIs, ROC plot, and the
metrics over the theta grid with their plot."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.evaluation import evaluate_arm, sweep_theta

evaluate_arm(
    slides=snakemake.input.slides, arm=snakemake.wildcards.arm, metrics_json=snakemake.output.metrics,
    metrics_csv=snakemake.output.table, pooled_slides=snakemake.output.slides, roc_plot=snakemake.output.roc,
    evaluate=snakemake.params.evaluate, seed=snakemake.params.seed,
)
sweep_theta(
    slides=snakemake.input.slides, arm=snakemake.wildcards.arm, table=snakemake.output.sweep,
    plot=snakemake.output.sweep_plot, aggregate=snakemake.params.aggregate,
)
