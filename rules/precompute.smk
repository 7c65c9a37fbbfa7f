rule precompute_sam:
    input:
        split_csv=proj("manifests", "{split}.csv"),
        prompt_marker=proj("prompt_sets", "{split}", "_shards", "shard_{shard}.json"),
    output:
        summary=proj("sam_precompute", "{split}", "_shards", "shard_{shard}.json"),
    log:
        proj("logs", "precompute_sam", "{split}", "shard_{shard}.log"),
    benchmark:
        proj("benchmarks", "precompute_sam", "{split}", "shard_{shard}.tsv")
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    script:
        "../workflow_scripts/precompute_sam.py"
