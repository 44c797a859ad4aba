"""Rule make_demo_slide: render one synthetic DUV-like slide of the demo cohort (pyramidal TIFF, MPP)."""
# ruff: noqa: F821
import duvflow_checkout  # noqa: F401 (this checkout's src/ first on sys.path, also in conda jobs)

from duvflow.core.runtime import setup_logging

setup_logging(snakemake.log[0])
from duvflow.demo.cohort import make_demo_slide

make_demo_slide(
    snakemake.output.slide, demo=snakemake.params.demo, slide_id=snakemake.wildcards.slide,
    label=snakemake.params.label, pattern=snakemake.params.pattern,
)
