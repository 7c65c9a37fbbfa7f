# Stage 8: simulated clicking with every configured policy (one GPU job per shard of the
# configured split), then one aggregate report per run with curves in the HTML report.


rule active_prompting:
    input:
        split_csv=LAYOUT.manifest("{split}"),
        state=LAYOUT.laplace_file("state"),
        meta=LAYOUT.laplace_file("meta"),
    output:
        jsonl=LAYOUT.active_prompting_shard("{split}", "{shard}"),
    log:
        LAYOUT.log("active_prompting", "run_{run_id}", "{split}", "shard_{shard}"),
    benchmark:
        LAYOUT.benchmark("active_prompting", "run_{run_id}", "{split}", "shard_{shard}")
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    params:
        settings=PARAMS["active_prompting"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/active_prompting.py"


rule active_prompting_report:
    input:
        shards=get_active_prompting_shards,
    output:
        metrics=LAYOUT.active_prompting_file("metrics"),
        table=LAYOUT.active_prompting_file("table"),
        markdown=LAYOUT.active_prompting_file("markdown"),
        curves=report(
            LAYOUT.active_prompting_file("curves"),
            category="Active prompting",
            subcategory="run {run_id}",
            labels={"figure": "mIoU vs clicks per policy (head solid, base dashed)"},
        ),
    log:
        LAYOUT.log("active_prompting_report", "run_{run_id}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        settings=PARAMS["active_prompting"],
    script:
        "../workflow_scripts/active_prompting_report.py"
