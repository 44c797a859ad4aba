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

from duvflow.baselines.config import BASELINE_ARMS
from duvflow.core.arms import arm_condition, expand_arms, fraction_values, resolve_arm
from duvflow.core.pretrained import check_pretrained
from duvflow.core.config import canonical, result_settings, typed_overrides
from duvflow.core.sheet import SampleSheetError, read_sheet, validate_sheet
from duvflow.core.splits import check_class_counts
from duvflow.core.validation import ConfigError, check_config
from duvflow.demo.cohort import cohort_plan
from snakemake.utils import update_config

# `--config aggregate='{theta: 0.3}'` changes one nested setting: Snakemake leaves the 0.3 a string
update_config(config, typed_overrides(workflow.config_settings.config))
# short messages naming each bad key first; then snakemake's validate fills in the defaults
try:
    check_config(
        config, os.path.join(workflow.basedir, "schemas", "config.schema.yaml")
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, schema="../schemas/config.schema.yaml")
# every configured pretrained weight can be had (local path, hub cache, or online): else stop now
if _weight_problems := check_pretrained(config):
    raise WorkflowError("\n".join(_weight_problems))

OUT = config["output_dir"]


def out(*parts):
    """A path under the configured output root."""
    return os.path.join(OUT, *parts)


def load_samples():
    if config["demo"]["enabled"]:
        # The demo slides are outputs of `make_demo_slide`; their ids and labels are known now.
        plan = cohort_plan(
            config["demo"]["n_slides"],
            config["demo"]["seed"],
            config["demo"]["slides_per_patient"],
        )
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
try:  # the folds need every class in every test fold: say so now, not after tiling
    check_class_counts(samples["label"], config["splits"]["n_folds"])
except ValueError as err:
    source = (
        "demo cohort"
        if config["demo"]["enabled"]
        else f"sample sheet {config['samples']}"
    )
    raise WorkflowError(f"{source}: {err}") from None
SLIDES = list(samples["slide_id"])
# classifier arms: `real`, or `real+<LDM condition>` (real patches + that condition's synthetic set);
# with `sampling.synthetic_fraction` a list, `real+<cond>@<f>` for each fraction f (duvflow.core.arms)
ARMS = expand_arms(config["arms"], config["sampling"]["synthetic_fraction"])
# the fractions of a sweep (None: a single number, the arms take their synthetic sets whole)
FRACTIONS = fraction_values(config["sampling"]["synthetic_fraction"])


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


def get_patients():
    """`{slide_id: patient_id}` from the sheet's optional column; None: each slide its own patient."""
    if "patient_id" not in samples.columns:
        return None
    return dict(zip(samples["slide_id"], samples["patient_id"]))


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
# the deployable model is a classifier arm's (the baselines are for comparison only)
CLASSIFIER_ARMS = [a for a in ARMS if a not in BASELINE_ARMS]
DEPLOY_ARM = (
    resolve_arm(config["deploy"]["arm"], config["sampling"]["synthetic_fraction"])
    if config["deploy"]["arm"]
    else (CLASSIFIER_ARMS[-1] if CLASSIFIER_ARMS else None)
)
if config["deploy"]["enabled"] and DEPLOY_ARM not in CLASSIFIER_ARMS:
    raise WorkflowError(
        f"deploy.arm {DEPLOY_ARM!r} is not one of the configured classifier arms "
        f"({', '.join(CLASSIFIER_ARMS) or 'none'}); set deploy.arm to one of them, or to null for the "
        "last one, or deploy.enabled: false"
    )


def cv_folds():
    """The cross-validation folds `0..K-1` (fold `all` is the deployable model's)."""
    return [str(k) for k in range(config["splits"]["n_folds"])]


CV_FOLDS = cv_folds()
FOLDS = CV_FOLDS + ["all"]  # every fold of splits.csv


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
    if config["classifier"]["init"] == "dino":  # starts from the fold's DINO teacher
        inputs["teacher"] = out("dino", f"fold_{wildcards.fold}", "teacher.safetensors")
    return inputs


def get_baseline_inputs(wildcards):
    """What a baseline arm fits on: the fold's DINO embeddings, or every slide's handcrafted features."""
    if wildcards.arm == "probe":
        return {"embeddings": out("embeddings", f"fold_{wildcards.fold}.parquet")}
    return {
        "features": expand(
            out("features", "handcrafted", "{slide}.parquet"), slide=SLIDES
        )
    }


def get_fold_slide_tables(wildcards):
    """An arm's slide tables of the cross-validation folds (fold `all` has no test slides)."""
    return expand(
        out("predictions", wildcards.arm, "fold_{fold}", "slides.csv"), fold=cv_folds()
    )


def get_fid_reports(arm):
    """Fidelity reports of the arm's synthetic sets, one per cross-validation fold."""
    cond = arm_condition(arm)
    return [out("fid", cond, f"fold_{k}.json") for k in cv_folds()] if cond else []


def get_fraction_arms(wildcards=None):
    """`real` and the arms of the fraction sweep, whose metrics the fraction plot draws."""
    return [a for a in ARMS if a == "real" or (FRACTIONS and arm_condition(a))]


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


def guidance_values():
    """`sampling.guidance` as a list; the first scale is the classifier arms'."""
    g = config["sampling"]["guidance"]
    return [float(v) for v in (g if isinstance(g, list) else [g])]


def guidance_label(value):
    """A guidance scale as a path segment value (`2.0` -> `2`, `1.5` -> `1.5`)."""
    return f"{float(value):g}"


def sweep_guidances():
    """Guidance scales sampled for the fidelity table only: the list after the first, and 0 (unconditional)."""
    extra = guidance_values()[1:]
    if config["fidelity"]["unconditional"]:
        extra.append(0.0)
    first = guidance_values()[0]
    return sorted({guidance_label(g) for g in extra if g != first}, key=float)


def sampling_params(guidance):
    """The sampling section with one guidance scale (a list's other values never rerun this set) and,
    for a fraction sweep, only its largest fraction (adding a smaller one never resamples).
    """
    params = {**cfg("sampling"), "guidance": float(guidance)}
    if FRACTIONS:
        params["synthetic_fraction"] = FRACTIONS[-1]
    return canonical(params)  # sorted keys, as every tracked section


def fidelity_params():
    """The fidelity section as the fidelity jobs read it (not the keys that only choose jobs)."""
    return {k: v for k, v in cfg("fidelity").items() if k != "unconditional"}


def fidelity_inputs(synthetic):
    """Inputs of a fidelity job: the synthetic folder (a path pattern), the fold's real patches and teacher."""

    def inputs(wildcards):
        return {
            **get_tile_tables(),
            "splits": out("splits.csv"),
            "synthetic": synthetic.format(**wildcards),
            "teacher": out("dino", f"fold_{wildcards.fold}", "teacher.safetensors"),
            "teacher_config": out("dino", f"fold_{wildcards.fold}", "teacher.json"),
        }

    return inputs


def get_guidance_sweep_reports(wildcards=None):
    """Fidelity reports of the guidance sweep (the classifier arms' sets are not among them)."""
    return expand(
        out("fid", "{cond}", "g{guidance}", "fold_{fold}.json"),
        cond=LDM_CONDS,
        guidance=sweep_guidances(),
        fold=cv_folds(),
    )


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
    keys = ("backbone", "model_kwargs", "init", "weights", "img_size", "pooling")
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
    targets += [out("comparison", f) for f in ("paired.csv", "summary.html")]
    targets += expand(
        out("evaluation", "{arm}", "{f}"), arm=ARMS, f=("metrics.json", "sweep.png")
    )
    if FRACTIONS and len(FRACTIONS) > 1 and LDM_CONDS:
        targets.append(out("comparison", "fraction.png"))
    if config["deploy"]["enabled"]:
        targets.append(out("deploy", DEPLOY_ARM, "model.json"))
        if config["deploy"]["slides"]:
            targets.append(out("deploy", DEPLOY_ARM, "new_slides"))
    return targets


# --- failure flags and paired comparisons (evaluate.smk) ---


def get_flag_sources():
    """What the failure checks read, per cross-validation fold: the DINO teachers and, with an LDM
    arm, the VAEs, the LDMs and the synthetic sets (as nested dicts, for `params:`)."""
    folds = cv_folds()
    return {
        "teachers": {k: out("dino", f"fold_{k}", "teacher.json") for k in folds},
        "vaes": {k: out("vae", f"fold_{k}") for k in folds} if LDM_CONDS else {},
        "ldms": {c: {k: out("ldm", c, f"fold_{k}") for k in folds} for c in LDM_CONDS},
        "synthetic": {
            c: {k: out("synthetic", c, f"fold_{k}") for k in folds} for c in LDM_CONDS
        },
    }


def get_flag_inputs(wildcards):
    """The files of `get_flag_sources`, as flat input lists."""
    src = get_flag_sources()
    return {
        "teachers": list(src["teachers"].values()),
        "vaes": list(src["vaes"].values()),
        "ldms": [p for folds in src["ldms"].values() for p in folds.values()],
        "synthetic": [p for folds in src["synthetic"].values() for p in folds.values()],
    }
