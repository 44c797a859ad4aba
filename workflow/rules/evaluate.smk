# Slide-level aggregation (theta: a parameter of this stage only, so changing it reruns nothing
# upstream), cross-validated evaluation per arm, the theta sweep and the comparison of the arms.
# A theta change reruns only these light jobs (pandas, NumPy, matplotlib; no torch, SciPy or
# scikit-learn): one aggregation job per arm covers all its cross-validation folds (outputs stay
# per fold; fold `all`, the deployable model's, is aggregated by export_model), and all of them are
# local rules (seconds of work: on a cluster they run beside Snakemake instead of waiting in a queue).


rule aggregate_slides:
    input:
        patches=expand(
            out("predictions", "{{arm}}", "fold_{fold}", "patches.parquet"),
            fold=CV_FOLDS,
        ),
        splits=out("splits.csv"),
    output:
        slides=expand(
            out("predictions", "{{arm}}", "fold_{fold}", "slides.csv"), fold=CV_FOLDS
        ),
        theta=expand(
            out("predictions", "{{arm}}", "fold_{fold}", "theta.json"), fold=CV_FOLDS
        ),
    log:
        out("logs", "aggregate_slides", "{arm}.log"),
    localrule: True
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        aggregate=cfg("aggregate"),
        folds=CV_FOLDS,
    script:
        "../scripts/aggregate_slides.py"


rule evaluate_arm:
    input:
        slides=get_fold_slide_tables,
    output:
        metrics=out("evaluation", "{arm}", "metrics.json"),
        table=report(
            out("evaluation", "{arm}", "metrics.csv"),
            caption="../report/evaluation_metrics.rst",
            category="5. Classification",
            subcategory="Metrics per arm",
            labels={"arm": "{arm}", "figure": "metrics table"},
        ),
        slides=out("evaluation", "{arm}", "slides.csv"),
        roc=report(
            out("evaluation", "{arm}", "roc.png"),
            caption="../report/evaluation_roc.rst",
            category="5. Classification",
            subcategory="ROC curves",
            labels={"arm": "{arm}", "figure": "ROC"},
        ),
        # metrics over aggregate.theta_grid (the same slide tables: one job instead of two)
        sweep=out("evaluation", "{arm}", "sweep.csv"),
        sweep_plot=report(
            out("evaluation", "{arm}", "sweep.png"),
            caption="../report/sweep_theta.rst",
            category="5. Classification",
            subcategory="Threshold sweep",
            labels={"arm": "{arm}", "figure": "theta sweep"},
        ),
    log:
        out("logs", "evaluate_arm", "{arm}.log"),
    localrule: True
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evaluate=cfg("evaluate"),
        aggregate=cfg("aggregate"),
        seed=config["seed"],
    script:
        "../scripts/evaluate_arm.py"


rule compare_arms:
    input:
        metrics=expand(out("evaluation", "{arm}", "metrics.json"), arm=ARMS),
        slides=expand(out("evaluation", "{arm}", "slides.csv"), arm=ARMS),
        fid=lambda wc: [path for arm in ARMS for path in get_fid_reports(arm)],
    output:
        table=report(
            out("comparison", "arms.csv"),
            caption="../report/compare_arms.rst",
            category="6. Results",
            labels={"figure": "results table"},
        ),
        markdown=report(
            out("comparison", "arms.md"),
            caption="../report/compare_arms.rst",
            category="6. Results",
            labels={"figure": "results table (Markdown)"},
        ),
        roc=report(
            out("comparison", "roc.png"),
            caption="../report/compare_roc.rst",
            category="6. Results",
            labels={"figure": "ROC of the arms"},
        ),
    log:
        out("logs", "compare_arms", "all.log"),
    localrule: True
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        arms=ARMS,
        fid=lambda wc: {arm: get_fid_reports(arm) for arm in ARMS},
        aggregate=cfg("aggregate"),
    script:
        "../scripts/compare_arms.py"


# With `sampling.synthetic_fraction` a list of 2+ values (a target only then): every slide metric
# against the fraction, per conditioning, `real` at fraction 0.
rule compare_fractions:
    input:
        metrics=expand(
            out("evaluation", "{arm}", "metrics.json"), arm=get_fraction_arms()
        ),
    output:
        table=out("comparison", "fraction.csv"),
        plot=report(
            out("comparison", "fraction.png"),
            caption="../report/compare_fractions.rst",
            category="6. Results",
            labels={"figure": "metrics against the synthetic fraction"},
        ),
    log:
        out("logs", "compare_fractions", "all.log"),
    localrule: True
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        arms=get_fraction_arms(),
        aggregate=cfg("aggregate"),
    script:
        "../scripts/compare_fractions.py"


rule flag_failures:
    input:
        unpack(get_flag_inputs),
    output:
        flags=report(
            out("comparison", "flags.csv"),
            caption="../report/flag_failures.rst",
            category="1. Summary",
            labels={"table": "failure flags"},
        ),
    log:
        out("logs", "flag_failures", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        sources=get_flag_sources(),
        arms=ARMS,
        flags=cfg("flags"),
    script:
        "../scripts/flag_failures.py"


rule compare_paired:
    input:
        slides=expand(out("evaluation", "{arm}", "slides.csv"), arm=ARMS),
        splits=out("splits.csv"),
        flags=out("comparison", "flags.csv"),
    output:
        table=report(
            out("comparison", "paired.csv"),
            caption="../report/compare_paired.rst",
            category="6. Results",
            labels={"figure": "paired comparisons"},
        ),
        markdown=out("comparison", "paired.md"),
        patients=out("comparison", "patients.csv"),
        summary=out("comparison", "summary.md"),
        summary_html=report(
            out("comparison", "summary.html"),
            caption="../report/summary.rst",
            category="1. Summary",
            labels={"table": "results at a glance"},
        ),
    log:
        out("logs", "compare_paired", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        arms=ARMS,
        aggregate=cfg("aggregate"),
        evaluate=cfg("evaluate"),
        seed=config["seed"],
    script:
        "../scripts/compare_paired.py"
