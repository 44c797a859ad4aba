# The embedded demo cohort: synthetic DUV-like pyramidal slides made from a seed.


rule make_demo_slide:
    output:
        slide=out("demo", "slides", "{slide}.tiff"),
    log:
        out("logs", "make_demo_slide", "{slide}.log"),
    benchmark:
        out("benchmarks", "make_demo_slide", "{slide}.tsv")
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        demo=cfg("demo"),
        label=get_slide_label,
        pattern=lambda wc: samples.loc[wc.slide, "pattern"],
    script:
        "../scripts/make_demo_slide.py"


rule write_demo_sheet:
    input:
        slides=expand(out("demo", "slides", "{slide}.tiff"), slide=SLIDES),
    output:
        sheet=out("demo", "slides.csv"),
    log:
        out("logs", "write_demo_sheet", "all.log"),
    conda:
        "../envs/duvflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        demo=cfg("demo"),
    script:
        "../scripts/write_demo_sheet.py"
