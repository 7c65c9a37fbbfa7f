# Stage 8: simulated clicking with every configured policy (one GPU job per shard of the
# configured split), then one aggregate report per run with curves in the HTML report.


rule active_prompting:
    input:
        split_csv=PROJECT.manifest("{split}"),
        state=LAYOUT.laplace_file("state"),
        meta=LAYOUT.laplace_file("meta"),
    output:
        jsonl=LAYOUT.active_prompting_shard("{split}", "{shard}"),
    log:
        LAYOUT.log("active_prompting", "{split}", "{shard}"),
    benchmark:
        LAYOUT.benchmark("active_prompting", "{split}", "{shard}")
    conda:
        "../envs/laplace_head.yaml"
    # torch's CPU threads per job: on the CPU, stage-8 jobs (shards, splits, ablation variants)
    # run side by side, one per core, which beats one job on every core
    threads: 1
    resources:
        gpu=SAM_DEVICE_GPU_SLOTS,
    params:
        layout=job_layout,
        settings=PARAMS["active_prompting"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/active_prompting.py"


rule active_prompting_report:
    input:
        shards=get_active_prompting_shards,
    output:
        metrics=LAYOUT.active_prompting_report(AP_SPLIT)["metrics"],
        table=LAYOUT.active_prompting_report(AP_SPLIT)["table"],
        markdown=LAYOUT.active_prompting_report(AP_SPLIT)["markdown"],
        curves=report(
            LAYOUT.active_prompting_report(AP_SPLIT)["curves"],
            category="Active prompting",
            subcategory="run {run_id}",
            labels={"figure": "mIoU vs clicks per policy (head solid, base dashed)"},
        ),
    log:
        LAYOUT.log("active_prompting_report"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["active_prompting"],
    script:
        "../workflow_scripts/active_prompting_report.py"


use rule active_prompting as active_prompting_for_head with:
    input:
        split_csv=PROJECT.manifest("{split}"),
        state=HEAD_LAYOUT.laplace_file("state"),
        meta=HEAD_LAYOUT.laplace_file("meta"),
    output:
        jsonl=HEAD_LAYOUT.active_prompting_shard("{split}", "{shard}"),
    log:
        HEAD_LAYOUT.log("active_prompting", "{split}", "{shard}"),
    benchmark:
        HEAD_LAYOUT.benchmark("active_prompting", "{split}", "{shard}")


use rule active_prompting_report as active_prompting_report_for_head with:
    output:
        metrics=HEAD_LAYOUT.active_prompting_report(AP_SPLIT)["metrics"],
        table=HEAD_LAYOUT.active_prompting_report(AP_SPLIT)["table"],
        markdown=HEAD_LAYOUT.active_prompting_report(AP_SPLIT)["markdown"],
        curves=report(
            HEAD_LAYOUT.active_prompting_report(AP_SPLIT)["curves"],
            category="Active prompting",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "mIoU vs clicks per policy (head solid, base dashed)"},
        ),
    log:
        HEAD_LAYOUT.log("active_prompting_report"),
