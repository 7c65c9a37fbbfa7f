# Stage 1: scan, validate and split (a checkpoint: the split CSVs decide the shards).


checkpoint build_manifests:
    output:
        all_samples=LAYOUT.manifest("all_samples"),
        train=LAYOUT.manifest("train"),
        val=LAYOUT.manifest("val"),
        test=LAYOUT.manifest("test"),
        report=LAYOUT.manifest_report,
    log:
        LAYOUT.log("build_manifests"),
    benchmark:
        LAYOUT.benchmark("build_manifests")
    conda:
        "../envs/laplace_head.yaml"
    threads: 2
    params:
        settings=PARAMS["build_manifests"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/build_manifests.py"
