checkpoint build_manifests:
    output:
        all_samples=proj("manifests", "all_samples.csv"),
        train=proj("manifests", "train.csv"),
        val=proj("manifests", "val.csv"),
        test=proj("manifests", "test.csv"),
        report=proj("manifests", "manifest_report.json"),
    log:
        proj("logs", "build_manifests", "build_manifests.log"),
    benchmark:
        proj("benchmarks", "build_manifests", "build_manifests.tsv")
    conda:
        "../envs/laplace_head.yaml"
    threads: 2
    params:
        images_root=config["data"]["images_root"],
        masks_root=config["data"]["masks_root"],
        split_seed=config["data"]["split_seed"],
    script:
        "../workflow_scripts/build_manifests.py"
