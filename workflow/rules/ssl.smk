# Self-supervised features: slide-level folds, DINO fine-tuning per fold, patch embeddings with the
# fold's teacher (and with the initial backbone, as the probes' baseline), and embedding probes.


rule make_splits:
    input:
        statuses=expand(out("tiles", "{slide}.json"), slide=SLIDES),
    output:
        splits=out("splits.csv"),
    log:
        out("logs", "make_splits", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        splits=cfg("splits"),
        labels=dict(zip(samples["slide_id"], samples["label"])),
        patients=get_patients(),
        seed=config["seed"],
    script:
        "../scripts/make_splits.py"


rule train_dino:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
        weights=ssl_weights,
    output:
        teacher=out("dino", "fold_{fold}", "teacher.safetensors"),
        teacher_config=out("dino", "fold_{fold}", "teacher.json"),
        metrics=out("dino", "fold_{fold}", "metrics.csv"),
        plot=report(
            out("dino", "fold_{fold}", "metrics.png"),
            caption="../report/dino_metrics.rst",
            category="3. Self-supervised features",
            subcategory="DINO training",
            labels={"fold": "{fold}"},
        ),
    log:
        out("logs", "train_dino", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "train_dino", "fold_{fold}.tsv")
    # the SSL chain (DINO, embeddings, the ssl LDM, its classifier arm) is the longest path of the
    # DAG: start it before jobs that have slack
    priority: 10
    conda:
        "../envs/duvflow.yaml"
    threads: res("train_dino", "threads")
    resources:
        mem_mb=res("train_dino", "mem_mb"),
        runtime=res("train_dino", "runtime"),
        gpu=gpus("train_dino"),
    params:
        dino=cfg("dino"),
        seed=config["seed"],
        # resumable checkpoints: undeclared, so a failed job's are kept for the rerun
        checkpoint_dir=lambda wc: out("dino", f"fold_{wc.fold}.ckpt"),
    script:
        "../scripts/train_dino.py"


rule embed_patches:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
        teacher=out("dino", "fold_{fold}", "teacher.safetensors"),
        teacher_config=out("dino", "fold_{fold}", "teacher.json"),
    output:
        embeddings=out("embeddings", "fold_{fold}.parquet"),
    log:
        out("logs", "embed_patches", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "embed_patches", "fold_{fold}.tsv")
    priority: 10  # on the longest path, as train_dino
    conda:
        "../envs/duvflow.yaml"
    threads: res("embed_patches", "threads")
    resources:
        mem_mb=res("embed_patches", "mem_mb"),
        runtime=res("embed_patches", "runtime"),
        gpu=gpus("embed_patches"),
    params:
        embed=cfg("embed"),
    script:
        "../scripts/embed_patches.py"


rule embed_initial:
    input:
        unpack(get_tile_tables),
        weights=ssl_weights,
    output:
        embeddings=out("embeddings", "initial.parquet"),
    log:
        out("logs", "embed_initial", "all.log"),
    benchmark:
        out("benchmarks", "embed_initial", "all.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("embed_patches", "threads")
    resources:
        mem_mb=res("embed_patches", "mem_mb"),
        runtime=res("embed_patches", "runtime"),
        gpu=gpus("embed_patches"),
    params:
        dino=initial_backbone(),
        embed=cfg("embed"),
        seed=config["seed"],
    script:
        "../scripts/embed_initial.py"


rule probe_embeddings:
    input:
        embeddings=out("embeddings", "fold_{fold}.parquet"),
        initial=out("embeddings", "initial.parquet"),
    output:
        probe=out("probe", "fold_{fold}", "probe.json"),
        plot=report(
            out("probe", "fold_{fold}", "projection.png"),
            caption="../report/probe_projection.rst",
            category="3. Self-supervised features",
            subcategory="Embedding projections",
            labels={"fold": "{fold}"},
        ),
    log:
        out("logs", "probe_embeddings", "fold_{fold}.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: res("probe_embeddings", "threads")
    resources:
        mem_mb=res("probe_embeddings", "mem_mb"),
        runtime=res("probe_embeddings", "runtime"),
    params:
        probe=cfg("probe"),
        seed=config["seed"],
    script:
        "../scripts/probe_embeddings.py"


rule summarise_probes:
    input:
        probes=expand(out("probe", "fold_{fold}", "probe.json"), fold=FOLDS),
    output:
        table=report(
            out("probe", "summary.tsv"),
            caption="../report/probe_summary.rst",
            category="3. Self-supervised features",
        ),
        plot=report(
            out("probe", "summary.png"),
            caption="../report/probe_summary.rst",
            category="3. Self-supervised features",
        ),
    log:
        out("logs", "summarise_probes", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/summarise_probes.py"
