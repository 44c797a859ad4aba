"""Rule compare_paired: paired bootstrap, McNemar and DeLong between arms; the results-at-a-glance summary."""
# ruff: noqa: F821
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.evaluate.paired import compare_paired

compare_paired(
    slides=snakemake.input.slides, arms=snakemake.params.arms, splits=snakemake.input.splits,
    flags=snakemake.input.flags, table=snakemake.output.table, markdown=snakemake.output.markdown,
    patients=snakemake.output.patients, summary=snakemake.output.summary,
    summary_html=snakemake.output.summary_html, aggregate=snakemake.params.aggregate,
    evaluate=snakemake.params.evaluate, seed=snakemake.params.seed,
)
