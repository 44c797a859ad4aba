# duvflow: DINO-guided latent diffusion for slide-level breast cancer classification.
# Logic lives in the `duvflow` package; rules only declare files and hand settings over.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDES),
    arm="|".join(re.escape(a) for a in ARMS),
    cond="ssl|class",  # LDM conditioning: DINO embedding or class label
    fold=r"\d+|all",  # cross-validation folds 0..K-1 and `all` (every slide trains)


include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/ssl.smk"
include: "workflow/rules/ldm.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
