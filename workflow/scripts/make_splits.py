"""Rule make_splits: slide- (or patient-) level stratified folds + fold `all` -> splits.csv."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.core.splits import make_splits

make_splits(statuses=list(snakemake.input.statuses), labels=snakemake.params.labels,
            output=snakemake.output.splits, splits=snakemake.params.splits, seed=snakemake.params.seed,
            patients=snakemake.params.patients)
