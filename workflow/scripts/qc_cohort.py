"""Rule qc_cohort: the cohort's tiling QC table (TSV) and plot from every slide's status JSON."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.slides.qc import qc_cohort

qc_cohort(status=snakemake.input.status, table=snakemake.output.table, plot=snakemake.output.plot)
