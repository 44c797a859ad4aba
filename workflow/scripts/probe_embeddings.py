"""Rule probe_embeddings: linear / k-NN probes and a 2-D projection, DINO teacher vs initial backbone."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.ssl.probe import probe_embeddings

probe_embeddings(embeddings=snakemake.input.embeddings, initial=snakemake.input.initial,
                 fold=snakemake.wildcards.fold, output=snakemake.output.probe, plot=snakemake.output.plot,
                 probe=snakemake.params.probe, seed=snakemake.params.seed, threads=snakemake.threads)
