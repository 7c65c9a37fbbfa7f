# Stage 2: seeded prompt-set JSONs, one job per shard of a split.


rule generate_promptsets:
    input:
        split_csv=LAYOUT.manifest("{split}"),
    output:
        summary=LAYOUT.shard_summary("prompt_sets", "{split}", "{shard}"),
    log:
        LAYOUT.log("generate_promptsets", "{split}", "shard_{shard}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        shard_size=PARAMS["generate_promptsets"]["shard_size"],
        num_promptsets=get_num_promptsets,
        min_pairs=PARAMS["generate_promptsets"]["min_pairs"],
        max_pairs=PARAMS["generate_promptsets"]["max_pairs"],
        prompt_seed=PARAMS["generate_promptsets"]["prompt_seed"],
        first_click_promptsets=PARAMS["generate_promptsets"]["first_click_promptsets"],
    script:
        "../workflow_scripts/generate_promptsets.py"
