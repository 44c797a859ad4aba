"""Rule summarise_probes: probe accuracy / AUC of every fold, before and after DINO, in one table + plot."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.ssl.probe import summarise_probes

summarise_probes(probes=list(snakemake.input.probes), table=snakemake.output.table, plot=snakemake.output.plot)
