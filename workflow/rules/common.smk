# Shared by the other .smk files - config and sample-sheet validation, paths, resources, input
# functions. Nothing here imports torch.
import json
import os
import re
import sys

from snakemake.utils import validate

# Rules import the `duvflow` package of this checkout whatever environment runs them (the venv,
# a rule's conda env, a SLURM job): put src/ on the path of this process and of every job.
DUVFLOW_SRC = os.path.normpath(os.path.join(workflow.basedir, "..", "src"))
sys.path.insert(0, DUVFLOW_SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [DUVFLOW_SRC, os.getenv("PYTHONPATH")]))
)

from duvflow.core.config import result_settings, typed_overrides
from duvflow.core.sheet import SampleSheetError, read_sheet, validate_sheet
from duvflow.demo.cohort import cohort_plan
from snakemake.utils import update_config

# `--config aggregate='{theta: 0.3}'` changes one nested setting: Snakemake leaves the 0.3 a string
update_config(config, typed_overrides(workflow.config_settings.config))
validate(config, schema="../schemas/config.schema.yaml")

OUT = config["output_dir"]


def out(*parts):
    """A path under the configured output root."""
    return os.path.join(OUT, *parts)


def load_samples():
    if config["demo"]["enabled"]:
        # The demo slides are outputs of `make_demo_slide`; their ids and labels are known now.
        plan = cohort_plan(config["demo"]["n_slides"], config["demo"]["seed"])
        plan["path"] = [
            os.path.abspath(out("demo", "slides", f"{s}.tiff"))
            for s in plan["slide_id"]
        ]
        return validate_sheet(plan, check_files=False, source="demo cohort")
    try:
        sheet = read_sheet(config["samples"])
    except SampleSheetError as err:
        raise WorkflowError(str(err)) from None
    validate(sheet, schema="../schemas/slides.schema.yaml")
    return sheet


samples = load_samples()
SLIDES = list(samples["slide_id"])
# classifier arms: `real`, or `real+<LDM condition>` (real patches + that condition's synthetic set)
ARMS = list(config["arms"])


def cfg(section):
    """A config section's result settings, for `params:` (so a changed setting reruns the rule).

    Its run-time-only keys (`duvflow.core.config.RUNTIME_KEYS`) are left out, so changing them
    reruns nothing, and so is `tiling.on_bad_slide` (tracked per slide: `bad_slide_policy`); the
    entry script adds them back from `snakemake.config` (`job_settings`).
    """
    return result_settings(section, config[section])


def res(rule_name, key):
    """`threads`, `mem_mb`, `runtime` or `gpu` of a rule from the config's `resources` section.

    Profiles may still override them (`set-threads`, `set-resources`); a changed value reruns nothing.
    """
    try:
        return config["resources"][rule_name][key]
    except KeyError:
        missing = f"resources.{rule_name}.{key}"
        raise WorkflowError(f"config: {missing} is not set") from None


def gpus(rule_name):
    """The GPUs a job of `rule_name` asks for (`resources: gpu=gpus("train_dino")`); 0 = CPU job.

    Its entry point claims them with `duvflow.gpu.gpu_job(snakemake.resources)`.
    """
    return res(rule_name, "gpu")


def get_slide_path(wildcards):
    if config["demo"]["enabled"]:
        # Exactly the path `make_demo_slide` declares (Snakemake matches paths as strings).
        return out("demo", "slides", f"{wildcards.slide}.tiff")
    return samples.loc[wildcards.slide, "path"]


def get_slide_label(wildcards):
    return samples.loc[wildcards.slide, "label"]


def bad_slide_policy(wildcards):
    """`tiling.on_bad_slide` as a tracked param of the slides whose outcome it changes, else None.

    Only an unreadable slide depends on the policy. Under `fail` its job fails and leaves nothing,
    so switching to `skip` runs it anyway (missing outputs). A slide recorded as skipped must fail
    once the policy is `fail`: for it alone the param changes. Readable slides never rerun.
    """
    if config["tiling"]["on_bad_slide"] != "fail":
        return None
    try:
        with open(out("tiles", f"{wildcards.slide}.json")) as f:
            skipped = json.load(f).get("status") == "skipped"
    except (OSError, ValueError):
        return None
    return "fail" if skipped else None


# --- classifier, aggregation, evaluation ---------------------------------------------------------
DEPLOY_ARM = config["deploy"]["arm"] or ARMS[-1]
if DEPLOY_ARM not in ARMS:
    raise WorkflowError(
        f"deploy.arm {DEPLOY_ARM!r} is not one of the configured arms ({', '.join(ARMS)})"
    )


def cv_folds():
    """The cross-validation folds `0..K-1` (fold `all` is the deployable model's)."""
    return [str(k) for k in range(config["splits"]["n_folds"])]


CV_FOLDS = cv_folds()
FOLDS = CV_FOLDS + ["all"]  # every fold of splits.csv


def arm_condition(arm):
    """The LDM condition whose synthetic set the arm adds (`real+ssl` -> `ssl`); None for `real`."""
    return arm.split("+", 1)[1] if "+" in arm else None


def get_tile_tables(wildcards=None):
    """Tile tables, patch stores and tiling statuses of every slide (parallel lists)."""
    return {
        "tables": expand(out("tiles", "{slide}.parquet"), slide=SLIDES),
        "stores": expand(out("tiles", "{slide}.h5"), slide=SLIDES),
        "statuses": expand(out("tiles", "{slide}.json"), slide=SLIDES),
    }


def get_classifier_inputs(wildcards):
    """Training data of an arm on a fold; the `real` arm needs nothing from the LDM."""
    inputs = {**get_tile_tables(), "splits": out("splits.csv")}
    cond = arm_condition(wildcards.arm)
    if cond:
        inputs["synthetic"] = out("synthetic", cond, f"fold_{wildcards.fold}")
    return inputs


def get_fold_slide_tables(wildcards):
    """An arm's slide tables of the cross-validation folds (fold `all` has no test slides)."""
    return expand(
        out("predictions", wildcards.arm, "fold_{fold}", "slides.csv"), fold=cv_folds()
    )


def get_fid_reports(arm):
    """Fidelity reports of the arm's synthetic sets, one per cross-validation fold."""
    cond = arm_condition(arm)
    return [out("fid", cond, f"fold_{k}.json") for k in cv_folds()] if cond else []


# --- latent diffusion (ldm.smk) -------------------------------------------------------------
# conditionings some classifier arm uses (`real+ssl` -> ssl); the figure needs both
LDM_CONDS = [c for c in ("class", "ssl") if any(arm_condition(a) == c for a in ARMS)]


def get_ldm_inputs(wildcards):
    """Latent cache and VAE of the fold; the SSL arm also needs the fold's embeddings."""
    inputs = {
        "latents": out("latents", f"fold_{wildcards.fold}.h5"),
        "vae": out("vae", f"fold_{wildcards.fold}"),
    }
    if wildcards.cond == "ssl":
        inputs["embeddings"] = out("embeddings", f"fold_{wildcards.fold}.parquet")
    return inputs


def get_ldm_targets():
    """Fidelity table and, with both conditionings, the per-fold comparison figures."""
    if not LDM_CONDS:
        return []
    targets = [out("fid", "summary.csv"), out("fid", "summary.md")]
    if len(LDM_CONDS) == 2:
        targets += expand(out("fid", "samples", "fold_{fold}.png"), fold=cv_folds())
    return targets


def get_final_outputs():
    targets = [out("qc", "cohort.tsv"), out("qc", "cohort.png")]
    if config["demo"]["enabled"]:
        targets.append(
            out("demo", "slides.csv")
        )  # the generated cohort's sample sheet (demo.smk)
    targets += get_ldm_targets()  # fidelity table + sample figures (ldm.smk)
    targets += get_ssl_targets()  # splits, embeddings, DINO curves, probes (ssl.smk)
    targets += (
        get_classifier_targets()
    )  # results table, per-arm evaluation, deployable model (evaluate.smk)
    return targets


# --- self-supervised stage (ssl.smk) ---


def ssl_weights(wildcards=None):
    """The configured initial backbone weights file, as an input (so replacing it reruns DINO)."""
    return [config["dino"]["weights"]] if config["dino"]["weights"] else []


def initial_backbone():
    """The dino settings that define the initial backbone (and only those: a changed lr or
    epoch count must not re-embed the baseline)."""
    keys = ("backbone", "model_kwargs", "weights", "hub", "img_size", "pooling")
    return {k: config["dino"][k] for k in keys}


def get_ssl_targets():
    return [
        out("splits.csv"),
        *expand(out("embeddings", "fold_{fold}.parquet"), fold=FOLDS),
        *expand(out("dino", "fold_{fold}", "metrics.png"), fold=FOLDS),
        *expand(out("probe", "fold_{fold}", "projection.png"), fold=FOLDS),
        out("probe", "summary.tsv"),
        out("probe", "summary.png"),
    ]


# --- classification and evaluation (classifier.smk, evaluate.smk) ---


def get_classifier_targets():
    """The results table and ROC plot, each arm's evaluation and sweep, the deployable model."""
    targets = [out("comparison", f) for f in ("arms.csv", "arms.md", "roc.png")]
    targets += expand(
        out("evaluation", "{arm}", "{f}"), arm=ARMS, f=("metrics.json", "sweep.png")
    )
    if config["deploy"]["enabled"]:
        targets.append(out("deploy", DEPLOY_ARM, "model.json"))
        if config["deploy"]["slides"]:
            targets.append(out("deploy", DEPLOY_ARM, "new_slides"))
    return targets
