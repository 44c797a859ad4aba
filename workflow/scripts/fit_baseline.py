"""Rule fit_baseline: a baseline arm's logistic regression on one fold -> val/test patch probabilities."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.baselines.linear import fit_baseline

fit_baseline(
    arm=snakemake.wildcards.arm, fold=snakemake.wildcards.fold, splits=snakemake.input.splits,
    embeddings=snakemake.input.get("embeddings"), features=snakemake.input.get("features"),
    output=snakemake.output.patches, info_output=snakemake.output.info, baselines=snakemake.params.baselines,
    seed=snakemake.params.seed,
)
