"""Rule summarise_fidelity: FID / FD-DINO / KID of every arm and fold in one table (CSV + Markdown)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.ldm.fidelity_table import summarise_fidelity

summarise_fidelity(reports=list(snakemake.input.reports), table=snakemake.output.table,
                   markdown=snakemake.output.markdown,
                   reconstruction=list(snakemake.input.reconstruction), sweep=list(snakemake.input.sweep))
