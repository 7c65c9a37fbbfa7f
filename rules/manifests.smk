# Stage 1: scan, validate and split (a checkpoint: the split CSVs decide the shards).


checkpoint build_manifests:
    output:
        all_samples=PROJECT.manifest("all_samples"),
        train=PROJECT.manifest("train"),
        val=PROJECT.manifest("val"),
        test=PROJECT.manifest("test"),
        report=PROJECT.manifest_report,
    log:
        PROJECT.log("build_manifests"),
    benchmark:
        PROJECT.benchmark("build_manifests")
    conda:
        "../envs/laplace_head.yaml"
    threads: 2
    params:
        layout=job_layout,
        settings=PARAMS["build_manifests"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/build_manifests.py"
