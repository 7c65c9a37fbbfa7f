# The settings stage-3 outputs depend on, per backend. They are declared as params so that
# Snakemake's params rerun-trigger re-runs the shard jobs when one changes (each job then
# recomputes only the stale prompt sets); the other backend's settings and sam.device are left
# out, so changing those re-runs nothing.
PRECOMPUTE_SAM_KEYS = {
    "sam": ["backend", "checkpoint", "model_type"],
    "random_walker": ["backend", "random_walker_max_side", "random_walker_beta"],
}


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
    params:
        sigma=config["prompt_generation"]["gaussian_sigma"],
        segmenter={
            key: config["sam"][key]
            for key in PRECOMPUTE_SAM_KEYS[config["sam"]["backend"]]
        },
    script:
        "../workflow_scripts/precompute_sam.py"
