# Latent diffusion, per fold: the autoencoder (trained on the fold's training patches, or the
# configured pretrained one) and, in the same job, its latent cache, one LDM per conditioning ({cond}: ssl = DINO
# embedding, class = label), the synthetic patch folder the classifier adds, and its fidelity.


rule train_vae:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
    output:
        vae=directory(out("vae", "fold_{fold}")),
        # every training patch through the frozen autoencoder, once: the LDMs' data
        latents=out("latents", "fold_{fold}.h5"),
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
        sampling=sampling_params(guidance_values()[0]),
        seed=config["seed"],
    script:
        "../scripts/sample_ldm.py"


# The same LDM at the guidance sweep's other scales (and 0, unconditional), for the fidelity table
# only: the same plan and noise as the classifier's set, so the sets are paired image by image.
use rule sample_ldm as sample_ldm_guidance with:
    output:
        synthetic=directory(
            out("synthetic_guidance", "{cond}", "g{guidance}", "fold_{fold}")
        ),
    log:
        out("logs", "sample_ldm", "{cond}", "g{guidance}", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "sample_ldm", "{cond}", "g{guidance}", "fold_{fold}.tsv")
    params:
        sampling=lambda wc: sampling_params(wc.guidance),
        seed=config["seed"],


rule measure_fidelity:
    input:
        unpack(fidelity_inputs(out("synthetic", "{cond}", "fold_{fold}"))),
    output:
        report=out("fid", "{cond}", "fold_{fold}.json"),
        neighbours=report(
            out("fid", "{cond}", "fold_{fold}_neighbours.png"),
            caption="../report/memorisation.rst",
            category="4. Latent diffusion",
            subcategory="Memorisation audit",
            labels={"conditioning": "{cond}", "fold": "{fold}"},
        ),
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
        fidelity=fidelity_params(),
        seed=config["seed"],
    script:
        "../scripts/measure_fidelity.py"


use rule measure_fidelity as measure_fidelity_guidance with:
    input:
        unpack(
            fidelity_inputs(
                out("synthetic_guidance", "{cond}", "g{guidance}", "fold_{fold}")
            )
        ),
    output:
        report=out("fid", "{cond}", "g{guidance}", "fold_{fold}.json"),
        neighbours=report(
            out("fid", "{cond}", "g{guidance}", "fold_{fold}_neighbours.png"),
            caption="../report/memorisation.rst",
            category="4. Latent diffusion",
            subcategory="Memorisation audit",
            labels={
                "conditioning": "{cond}",
                "guidance": "{guidance}",
                "fold": "{fold}",
            },
        ),
    log:
        out("logs", "measure_fidelity", "{cond}", "g{guidance}", "fold_{fold}.log"),
    benchmark:
        out(
            "benchmarks",
            "measure_fidelity",
            "{cond}",
            "g{guidance}",
            "fold_{fold}.tsv",
        )


rule measure_reconstruction:
    input:
        unpack(get_tile_tables),
        splits=out("splits.csv"),
        vae=out("vae", "fold_{fold}"),
    output:
        report=out("fid", "reconstruction", "fold_{fold}.json"),
    log:
        out("logs", "measure_reconstruction", "fold_{fold}.log"),
    benchmark:
        out("benchmarks", "measure_reconstruction", "fold_{fold}.tsv")
    conda:
        "../envs/duvflow.yaml"
    # the same kind of job as measure_fidelity (Inception features of a few thousand patches)
    threads: res("measure_fidelity", "threads")
    resources:
        mem_mb=res("measure_fidelity", "mem_mb"),
        runtime=res("measure_fidelity", "runtime"),
        gpu=gpus("measure_fidelity"),
    params:
        fidelity=fidelity_params(),
        image_size=config["vae"]["image_size"],
        seed=config["seed"],
    script:
        "../scripts/measure_reconstruction.py"


rule plot_samples:
    input:
        unpack(get_tile_tables),
        ssl=out("synthetic", "ssl", "fold_{fold}"),
        class_=out("synthetic", "class", "fold_{fold}"),
    output:
        figure=report(
            out("fid", "samples", "fold_{fold}.png"),
            caption="../report/plot_samples.rst",
            category="4. Latent diffusion",
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
        grid=config["sample_figure"]["grid"],
    script:
        "../scripts/plot_samples.py"


rule summarise_fidelity:
    input:
        reports=expand(
            out("fid", "{cond}", "fold_{fold}.json"), cond=LDM_CONDS, fold=cv_folds()
        ),
        sweep=get_guidance_sweep_reports(),
        reconstruction=expand(
            out("fid", "reconstruction", "fold_{fold}.json"), fold=cv_folds()
        ),
    output:
        table=report(
            out("fid", "summary.csv"),
            caption="../report/summarise_fidelity.rst",
            category="4. Latent diffusion",
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
