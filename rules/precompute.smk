# Stage 3: base-segmenter logits and prompt maps, one GPU job per shard of a split. The
# segmenter params hold only the settings the active backend's outputs depend on
# (laplace_head.settings.SEGMENTER_KEYS): changing one re-runs the shard jobs, which then
# recompute only the stale prompt sets. sam.device travels in the runtime settings.


rule precompute_sam:
    input:
        split_csv=PROJECT.manifest("{split}"),
        prompt_marker=PROJECT.shard_summary("prompt_sets", "{split}", "{shard}"),
    output:
        summary=PROJECT.shard_summary("sam_precompute", "{split}", "{shard}"),
    log:
        PROJECT.log("precompute_sam", "{split}", "{shard}"),
    benchmark:
        PROJECT.benchmark("precompute_sam", "{split}", "{shard}")
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=SAM_DEVICE_GPU_SLOTS,
    params:
        layout=job_layout,
        settings=PARAMS["precompute_sam"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/precompute_sam.py"
