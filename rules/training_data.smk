# Stages 4 and 4.5: the training index of a split, then its packed HDF5.


rule build_training_index:
    input:
        split_csv=LAYOUT.manifest("{split}"),
        summaries=get_precompute_shard_summaries,
    output:
        index=LAYOUT.training_index("{split}"),
        failures=LAYOUT.training_failures("{split}"),
    log:
        LAYOUT.log("build_training_index", "{split}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        precompute_dir=str(LAYOUT.precompute_dir("{split}")),
        prompt_sets_dir=str(LAYOUT.prompt_sets_dir("{split}")),
    script:
        "../workflow_scripts/build_training_index.py"


rule pack_hdf5:
    input:
        index=LAYOUT.training_index("{split}"),
    output:
        h5=LAYOUT.split_h5("{split}"),
    log:
        LAYOUT.log("pack_hdf5", "{split}"),
    benchmark:
        LAYOUT.benchmark("pack_hdf5", "{split}")
    conda:
        "../envs/laplace_head.yaml"
    script:
        "../workflow_scripts/pack_hdf5.py"
