# Shared by every rule file: config and sample-sheet validation, wildcard constraints, paths and
# input functions. Nothing here imports torch.
import os
import re

from snakemake.utils import validate

from duvflow.sheet import SampleSheetError, read_sheet, validate_sheet
from duvflow.slides.demo import cohort_plan


validate(config, schema="../schemas/config.schema.yaml")

OUT = config["output_dir"]


def out(*parts):
    """A path under the configured output root."""
    return os.path.join(OUT, *parts)


def load_samples():
    if config["demo"]["enabled"]:
        # The demo slides are outputs of `make_demo_slide`; their ids and labels are known now.
        plan = cohort_plan(config["demo"]["n_slides"], config["demo"]["seed"])
        plan["path"] = [os.path.abspath(out("demo", "slides", f"{s}.tiff")) for s in plan["slide_id"]]
        return validate_sheet(plan, check_files=False, source="demo cohort")
    try:
        sheet = read_sheet(config["samples"])
    except SampleSheetError as err:
        raise WorkflowError(str(err)) from None
    validate(sheet, schema="../schemas/slides.schema.yaml")
    return sheet


samples = load_samples()
SLIDES = list(samples["slide_id"])


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDES),


def cfg(section):
    """A config section, for `params:` (so a changed setting reruns the rule)."""
    return config[section]


def get_slide_path(wildcards):
    return samples.loc[wildcards.slide, "path"]


def get_slide_label(wildcards):
    return samples.loc[wildcards.slide, "label"]


def get_final_outputs():
    targets = [out("qc", "cohort.tsv"), out("qc", "cohort.png")]
    return targets
