rule build_training_index:
    input:
        split_csv=proj("manifests", "{split}.csv"),
        summaries=get_precompute_shard_summaries,
    output:
        index=proj("training_data", "no_image", "{split}_index.csv"),
        failures=proj("training_data", "no_image", "{split}_failures.csv"),
    log:
        proj("logs", "build_training_index", "{split}.log"),
    conda:
        "../envs/laplace_head.yaml"
    script:
        "../workflow_scripts/build_training_index.py"


rule pack_hdf5:
    input:
        index=proj("training_data", "no_image", "{split}_index.csv"),
    output:
        h5=proj("training_data", "no_image", "{split}.h5"),
    log:
        proj("logs", "pack_hdf5", "{split}.log"),
    benchmark:
        proj("benchmarks", "pack_hdf5", "{split}.tsv")
    conda:
        "../envs/laplace_head.yaml"
    script:
        "../workflow_scripts/pack_hdf5.py"
