"""Rule sweep_theta: slide metrics of one arm over the theta grid, with the plot."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.evaluation import sweep_theta

sweep_theta(
    slides=snakemake.input.slides, arm=snakemake.wildcards.arm, table=snakemake.output.table,
    plot=snakemake.output.plot, aggregate=snakemake.params.aggregate,
)
