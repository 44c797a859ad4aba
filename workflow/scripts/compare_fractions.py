"""Rule compare_fractions: the slide metrics against the synthetic fraction (a fraction sweep's plot)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.evaluation import compare_fractions

compare_fractions(
    metrics=snakemake.input.metrics, arms=snakemake.params.arms, table=snakemake.output.table,
    plot=snakemake.output.plot, aggregate=snakemake.params.aggregate,
)
