"""Rule extract_patch_features: handcrafted colour and texture features of every patch of a slide."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.baselines.features import extract_patch_features

extract_patch_features(
    table=snakemake.input.table, store=snakemake.input.store, status=snakemake.input.status,
    output=snakemake.output.features, baselines=snakemake.params.baselines,
)
