# Stage 2: seeded prompt-set JSONs, one job per shard of a split.


rule generate_promptsets:
    input:
        split_csv=PROJECT.manifest("{split}"),
    output:
        summary=PROJECT.shard_summary("prompt_sets", "{split}", "{shard}"),
    log:
        PROJECT.log("generate_promptsets", "{split}", "{shard}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=get_promptset_settings,
    script:
        "../workflow_scripts/generate_promptsets.py"
