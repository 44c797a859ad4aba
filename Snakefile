# duvflow: DINO-guided latent diffusion for slide-level breast cancer classification.
# Logic lives in the `duvflow` package; rules only declare files and hand settings over.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/ssl.smk"
include: "workflow/rules/ldm.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
