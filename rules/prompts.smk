rule generate_promptsets:
    input:
        split_csv=proj("manifests", "{split}.csv"),
    output:
        summary=proj("prompt_sets", "{split}", "_shards", "shard_{shard}.json"),
    log:
        proj("logs", "generate_promptsets", "{split}", "shard_{shard}.log"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        shard_size=SHARD_SIZE,
        num_promptsets=get_num_promptsets,
        min_pairs=config["prompt_generation"]["min_pairs"],
        max_pairs=config["prompt_generation"]["max_pairs"],
        prompt_seed=config["prompt_generation"]["prompt_seed"],
    script:
        "../workflow_scripts/generate_promptsets.py"
