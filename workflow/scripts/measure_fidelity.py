"""Rule measure_fidelity: FID, FD-DINO and KID of one synthetic folder against the fold's real patches."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.gpu import gpu_job
from duvflow.ldm.fidelity import measure_fidelity

with gpu_job(snakemake.resources):
    measure_fidelity(
        synthetic=snakemake.input.synthetic, tables=snakemake.input.tables, stores=snakemake.input.stores,
        statuses=snakemake.input.statuses, splits=snakemake.input.splits, fold=snakemake.wildcards.fold,
        condition=snakemake.wildcards.cond, teacher=snakemake.input.teacher,
        teacher_config=snakemake.input.teacher_config, output=snakemake.output.report,
        neighbours=snakemake.output.neighbours,
        fidelity=job_settings(snakemake, "fidelity"), seed=snakemake.params.seed, threads=snakemake.threads,
    )
