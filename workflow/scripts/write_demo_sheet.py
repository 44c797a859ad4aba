"""Rule write_demo_sheet: the sample sheet (slide_id, path, label) of the generated demo cohort."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.demo.cohort import write_sheet

write_sheet(snakemake.output.sheet, slides=list(snakemake.input.slides), demo=snakemake.params.demo)
