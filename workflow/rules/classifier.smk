# Classifier: one ViT per arm and fold (real patches + the arm's synthetic set) and its patch
# predictions on the fold's validation and test slides (in the same job: the trained model is in
# memory, and a job start costs more than the predictions on a CPU), and the deployable model
# (fold `all`) for new slides.


rule train_classifier:
    input:
        unpack(get_classifier_inputs),
    output:
        model=out("classifier", "{arm}", "fold_{fold}", "model.safetensors"),
        meta=out("classifier", "{arm}", "fold_{fold}", "model.json"),
        metrics=report(
            out("classifier", "{arm}", "fold_{fold}", "metrics.csv"),
            caption="../report/classifier_training.rst",
            category="5. Classification",
            subcategory="Training",
            labels={"arm": "{arm}", "fold": "{fold}", "table": "training per epoch"},
        ),
        patches=out("predictions", "{arm}", "fold_{fold}", "patches.parquet"),
    log:
        out("logs", "train_classifier", "{arm}", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "train_classifier", "{arm}", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("train_classifier", "threads")
    resources:
        mem_mb=res("train_classifier", "mem_mb"),
        runtime=res("train_classifier", "runtime"),
        gpu=gpus("train_classifier"),
    params:
        classifier=cfg("classifier"),
        tiling=cfg("tiling"),
        seed=config["seed"],
        # resumable checkpoints: undeclared, so a failed job's are kept for the rerun
        checkpoint_dir=lambda wc: out("classifier", wc.arm, f"fold_{wc.fold}.ckpt"),
        model_dir=lambda wc, output: os.path.dirname(output.model),
    script:
        "../scripts/train_classifier.py"


rule export_model:
    input:
        model=out("classifier", "{arm}", "fold_all", "model.safetensors"),
        meta=out("classifier", "{arm}", "fold_all", "model.json"),
        patches=out("predictions", "{arm}", "fold_all", "patches.parquet"),
        splits=out("splits.csv"),
    output:
        model=out("deploy", "{arm}", "model.safetensors"),
        meta=out("deploy", "{arm}", "model.json"),
        # fold `all`'s slide table and theta (its validation slides), as aggregate_slides writes them per fold
        slides=out("predictions", "{arm}", "fold_all", "slides.csv"),
        theta=out("predictions", "{arm}", "fold_all", "theta.json"),
    log:
        out("logs", "export_model", "{arm}.log"),
    localrule: True
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        aggregate=cfg("aggregate"),
    script:
        "../scripts/export_model.py"


rule predict_new_slides:
    input:
        slides=config["deploy"]["slides"],
        model=out("deploy", "{arm}", "model.safetensors"),
        meta=out("deploy", "{arm}", "model.json"),
    output:
        folder=directory(out("deploy", "{arm}", "new_slides")),
    log:
        out("logs", "predict_new_slides", "{arm}.log"),
    benchmark:
        out("benchmarks", "predict_new_slides", "{arm}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("predict_new_slides", "threads")
    resources:
        mem_mb=res("predict_new_slides", "mem_mb"),
        runtime=res("predict_new_slides", "runtime"),
        gpu=gpus("predict_new_slides"),
    params:
        model_dir=lambda wc, input: os.path.dirname(input.model),
    script:
        "../scripts/predict_new_slides.py"
