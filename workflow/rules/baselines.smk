# Baseline arms (`probe`, `handcrafted`): a logistic regression per fold on the fold's DINO-teacher
# embeddings or on handcrafted colour/texture features, trained on the fold's training slides. Their
# patch predictions have the classifier's layout, so aggregation and evaluation are those of every arm.


# a baseline's patch predictions come from fit_baseline, never from a (non-existent) classifier
ruleorder: fit_baseline > train_classifier


rule extract_patch_features:
    input:
        table=out("tiles", "{slide}.parquet"),
        store=out("tiles", "{slide}.h5"),
        status=out("tiles", "{slide}.json"),
    output:
        features=out("features", "handcrafted", "{slide}.parquet"),
    log:
        out("logs", "extract_patch_features", "{slide}.log"),
    benchmark:
        out("benchmarks", "extract_patch_features", "{slide}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        baselines=cfg("baselines"),
    script:
        "../scripts/extract_patch_features.py"


rule fit_baseline:
    input:
        unpack(get_baseline_inputs),
        splits=out("splits.csv"),
    output:
        patches=out("predictions", "{arm}", "fold_{fold}", "patches.parquet"),
        info=out("baselines", "{arm}", "fold_{fold}.json"),
    log:
        out("logs", "fit_baseline", "{arm}", "fold_{fold}.log"),
    wildcard_constraints:
        arm="|".join(BASELINE_ARMS),
        fold=r"\d+",
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        baselines=cfg("baselines"),
        seed=config["seed"],
    script:
        "../scripts/fit_baseline.py"
