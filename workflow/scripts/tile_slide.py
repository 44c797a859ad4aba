"""Rule tile_slide: tissue mask, patch grid, packed patch store, tile table, status and QC thumbnail."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.config import job_settings
from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.slides.tiling import tile_slide

tile_slide(
    slide=snakemake.input.slide, slide_id=snakemake.wildcards.slide, label=snakemake.params.label,
    tiling=job_settings(snakemake, "tiling"), tiles=snakemake.output.tiles, store=snakemake.output.store,
    status=snakemake.output.status, thumbnail=snakemake.output.thumbnail, threads=snakemake.threads,
)
