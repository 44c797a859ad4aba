"""Rule flag_failures: collapsed DINO teachers, flat LDM losses, VAEs that do not reconstruct, short synthetic sets."""
# ruff: noqa: F821
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.flags import collect_flags

collect_flags(**snakemake.params.sources, arms=snakemake.params.arms, output=snakemake.output.flags,
              config=snakemake.params.flags)
