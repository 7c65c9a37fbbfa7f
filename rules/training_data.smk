# Stages 4 and 4.5: the training index of a split, then its packed HDF5. The HDF5 records the
# segmenter fingerprint of the settings stage 3 used (sam keys and prompt sigma), which stage 6
# copies into the posterior's meta.


rule build_training_index:
    input:
        split_csv=PROJECT.manifest("{split}"),
        summaries=get_precompute_shard_summaries,
    output:
        index=PROJECT.training_index("{split}"),
        failures=PROJECT.training_failures("{split}"),
    log:
        PROJECT.log("build_training_index", "{split}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["build_training_index"],
    script:
        "../workflow_scripts/build_training_index.py"


rule pack_hdf5:
    input:
        index=PROJECT.training_index("{split}"),
    output:
        h5=PROJECT.split_h5("{split}"),
    log:
        PROJECT.log("pack_hdf5", "{split}"),
    benchmark:
        PROJECT.benchmark("pack_hdf5", "{split}")
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["pack_hdf5"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/pack_hdf5.py"


# Another head's split: an image head's file holds the image once per sample and links to the
# seed head's split for the rest (laplace_head.cache.split_h5), which it takes as its input.
use rule pack_hdf5 as pack_hdf5_for_head with:
    input:
        index=PROJECT.training_index("{split}"),
        base_h5=PROJECT.split_h5("{split}"),
    output:
        h5=HEAD_PROJECT.split_h5("{split}"),
    log:
        HEAD_PROJECT.log("pack_hdf5", "{split}"),
    benchmark:
        HEAD_PROJECT.benchmark("pack_hdf5", "{split}")
