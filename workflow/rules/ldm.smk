# Latent diffusion, per fold: the autoencoder (trained on the fold's training patches, or the
# configured pretrained one), the latent cache, one LDM per conditioning ({cond}: ssl = DINO
# embedding, class = label), the synthetic patch folder the classifier adds, and its fidelity.


rule train_vae:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
    output:
        vae=directory(out("vae", "fold_{fold}")),
    log:
        out("logs", "train_vae", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "train_vae", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("train_vae", "threads")
    resources:
        mem_mb=res("train_vae", "mem_mb"),
        runtime=res("train_vae", "runtime"),
        gpu=gpus("train_vae"),
    params:
        vae=cfg("vae"),
        seed=config["seed"],
        # resumable checkpoints: undeclared, so a failed job's are kept for the rerun
        checkpoint_dir=lambda wc: out("vae", f"fold_{wc.fold}.ckpt"),
    script:
        "../scripts/train_vae.py"


rule encode_latents:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
        vae=out("vae", "fold_{fold}"),
    output:
        latents=out("latents", "fold_{fold}.h5"),
    log:
        out("logs", "encode_latents", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "encode_latents", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("encode_latents", "threads")
    resources:
        mem_mb=res("encode_latents", "mem_mb"),
        runtime=res("encode_latents", "runtime"),
        gpu=gpus("encode_latents"),
    params:
        vae=cfg("vae"),
    script:
        "../scripts/encode_latents.py"


rule train_ldm:
    input:
        unpack(get_ldm_inputs),
    output:
        model=directory(out("ldm", "{cond}", "fold_{fold}")),
    log:
        out("logs", "train_ldm", "{cond}", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "train_ldm", "{cond}", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("train_ldm", "threads")
    resources:
        mem_mb=res("train_ldm", "mem_mb"),
        runtime=res("train_ldm", "runtime"),
        gpu=gpus("train_ldm"),
    params:
        ldm=cfg("ldm"),
        seed=config["seed"],
        checkpoint_dir=lambda wc: out("ldm", wc.cond, f"fold_{wc.fold}.ckpt"),
    script:
        "../scripts/train_ldm.py"


rule sample_ldm:
    input:
        unpack(get_ldm_inputs),
        model=out("ldm", "{cond}", "fold_{fold}"),
    output:
        synthetic=directory(out("synthetic", "{cond}", "fold_{fold}")),
    log:
        out("logs", "sample_ldm", "{cond}", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "sample_ldm", "{cond}", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("sample_ldm", "threads")
    resources:
        mem_mb=res("sample_ldm", "mem_mb"),
        runtime=res("sample_ldm", "runtime"),
        gpu=gpus("sample_ldm"),
    params:
        sampling=cfg("sampling"),
        seed=config["seed"],
    script:
        "../scripts/sample_ldm.py"


rule measure_fidelity:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
        synthetic=out("synthetic", "{cond}", "fold_{fold}"),
        teacher=out("dino", "fold_{fold}", "teacher.safetensors"),
        teacher_config=out("dino", "fold_{fold}", "teacher.json"),
    output:
        report=out("fid", "{cond}", "fold_{fold}.json"),
    log:
        out("logs", "measure_fidelity", "{cond}", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "measure_fidelity", "{cond}", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("measure_fidelity", "threads")
    resources:
        mem_mb=res("measure_fidelity", "mem_mb"),
        runtime=res("measure_fidelity", "runtime"),
        gpu=gpus("measure_fidelity"),
    params:
        fidelity=cfg("fidelity"),
        seed=config["seed"],
    script:
        "../scripts/measure_fidelity.py"


rule plot_samples:
    input:
        unpack(get_tile_tables),
        ssl=out("synthetic", "ssl", "fold_{fold}"),
        class_=out("synthetic", "class", "fold_{fold}"),
    output:
        figure=report(
            out("fid", "samples", "fold_{fold}.png"),
            caption="../report/plot_samples.rst",
            category="3. Latent diffusion",
            subcategory="Samples",
            labels={"fold": "{fold}"},
        ),
    log:
        out("logs", "plot_samples", "fold_{fold}.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        grid=config["fidelity"]["figure_grid"],
    script:
        "../scripts/plot_samples.py"


rule summarise_fidelity:
    input:
        reports=expand(
            out("fid", "{cond}", "fold_{fold}.json"), cond=LDM_CONDS, fold=cv_folds()
        ),
    output:
        table=report(
            out("fid", "summary.csv"),
            caption="../report/summarise_fidelity.rst",
            category="3. Latent diffusion",
            labels={"table": "fidelity per arm and fold"},
        ),
        markdown=out("fid", "summary.md"),
    log:
        out("logs", "summarise_fidelity", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/summarise_fidelity.py"
