"""Rule plot_samples: real | class-conditioned | SSL-conditioned patches of one fold, side by side."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.ldm.figures import plot_samples

plot_samples(
    ssl=snakemake.input.ssl, class_=snakemake.input.class_, tables=snakemake.input.tables,
    stores=snakemake.input.stores, statuses=snakemake.input.statuses, fold=snakemake.wildcards.fold,
    output=snakemake.output.figure, grid=snakemake.params.grid,
)
