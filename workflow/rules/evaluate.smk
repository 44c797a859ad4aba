# Slide-level aggregation (theta: a parameter of this stage only, so changing it reruns nothing
# upstream), cross-validated evaluation per arm, the theta sweep and the comparison of the arms.


rule aggregate_slides:
    input:
        patches=out("predictions", "{arm}", "fold_{fold}", "patches.parquet"),
        splits=out("splits.csv"),
    output:
        slides=out("predictions", "{arm}", "fold_{fold}", "slides.csv"),
        theta=out("predictions", "{arm}", "fold_{fold}", "theta.json"),
    log:
        out("logs", "aggregate_slides", "{arm}", "fold_{fold}.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        aggregate=cfg("aggregate"),
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
            category="4. Classification",
            subcategory="Metrics per arm",
            labels={"arm": "{arm}", "figure": "metrics table"},
        ),
        slides=out("evaluation", "{arm}", "slides.csv"),
        roc=report(
            out("evaluation", "{arm}", "roc.png"),
            caption="../report/evaluation_roc.rst",
            category="4. Classification",
            subcategory="ROC curves",
            labels={"arm": "{arm}", "figure": "ROC"},
        ),
    log:
        out("logs", "evaluate_arm", "{arm}.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evaluate=cfg("evaluate"),
        seed=config["seed"],
    script:
        "../scripts/evaluate_arm.py"


rule sweep_theta:
    input:
        slides=get_fold_slide_tables,
    output:
        table=out("evaluation", "{arm}", "sweep.csv"),
        plot=report(
            out("evaluation", "{arm}", "sweep.png"),
            caption="../report/sweep_theta.rst",
            category="4. Classification",
            subcategory="Threshold sweep",
            labels={"arm": "{arm}", "figure": "theta sweep"},
        ),
    log:
        out("logs", "sweep_theta", "{arm}.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        aggregate=cfg("aggregate"),
    script:
        "../scripts/sweep_theta.py"


rule compare_arms:
    input:
        metrics=expand(out("evaluation", "{arm}", "metrics.json"), arm=ARMS),
        slides=expand(out("evaluation", "{arm}", "slides.csv"), arm=ARMS),
        fid=lambda wc: [path for arm in ARMS for path in get_fid_reports(arm)],
    output:
        table=report(
            out("comparison", "arms.csv"),
            caption="../report/compare_arms.rst",
            category="5. Results",
            labels={"figure": "results table"},
        ),
        markdown=report(
            out("comparison", "arms.md"),
            caption="../report/compare_arms.rst",
            category="5. Results",
            labels={"figure": "results table (Markdown)"},
        ),
        roc=report(
            out("comparison", "roc.png"),
            caption="../report/compare_roc.rst",
            category="5. Results",
            labels={"figure": "ROC of the arms"},
        ),
    log:
        out("logs", "compare_arms", "all.log"),
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
