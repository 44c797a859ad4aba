# Tiling: one job per slide (patch table + packed store + QC thumbnail), then the cohort QC.


rule tile_slide:
    input:
        slide=get_slide_path,
    output:
        tiles=out("tiles", "{slide}.parquet"),
        store=out("tiles", "{slide}.h5"),
        status=out("tiles", "{slide}.json"),
        thumbnail=report(
            out("qc", "thumbnails", "{slide}.png"),
            caption="../report/qc_thumbnail.rst",
            category="2. Tiling QC",
            subcategory="Thumbnails",
            labels={"slide": "{slide}"},
        ),
    log:
        out("logs", "tile_slide", "{slide}.log"),
    benchmark:
        out("benchmarks", "tile_slide", "{slide}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: res("tile_slide", "threads")
    resources:
        mem_mb=res("tile_slide", "mem_mb"),
        runtime=res("tile_slide", "runtime"),
    params:
        tiling=cfg("tiling"),
        label=get_slide_label,
        # tiling.on_bad_slide, tracked only for the slides whose outcome it changes
        bad_slide=bad_slide_policy,
    script:
        "../scripts/tile_slide.py"


rule qc_cohort:
    input:
        status=expand(out("tiles", "{slide}.json"), slide=SLIDES),
    output:
        table=report(
            out("qc", "cohort.tsv"),
            caption="../report/qc_table.rst",
            category="2. Tiling QC",
        ),
        plot=report(
            out("qc", "cohort.png"),
            caption="../report/qc_plot.rst",
            category="2. Tiling QC",
        ),
    log:
        out("logs", "qc_cohort", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/qc_cohort.py"
