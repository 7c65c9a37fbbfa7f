# Stage 5: train the head. The only declared output is training_summary.json, written last:
# Snakemake deletes the declared outputs of an interrupted job, so declaring last.pt,
# optimizer_last.pt, ... would let it delete exactly the files that resume needs. Re-running
# the same command after a kill resumes from the last completed epoch (resume="auto").
# The head and training settings that change the weights are params: changing one under an
# existing run id re-runs train_head, which then refuses and names the changed keys (use a new
# training.run_id). Runtime settings (laplace_head.settings.RUNTIME_KEYS) are not triggers.


rule train_head:
    input:
        train_h5=PROJECT.split_h5("train"),
        val_h5=PROJECT.split_h5("val"),
    output:
        summary=LAYOUT.training_summary,
    log:
        LAYOUT.log("train_head"),
    benchmark:
        LAYOUT.benchmark("train_head")
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    params:
        layout=job_layout,
        settings=PARAMS["train_head"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/train_head.py"


rule sanity_check_head:
    input:
        train_h5=PROJECT.split_h5("train"),
    output:
        sanity=LAYOUT.sanity_check,
    log:
        LAYOUT.log("sanity_check_head"),
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    params:
        layout=job_layout,
        settings=PARAMS["train_head"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/sanity_check_head.py"


rule plot_training_curves:
    input:
        summary=LAYOUT.training_summary,
    output:
        png=report(
            LAYOUT.training_curves,
            category="Training",
            subcategory="run {run_id}",
            labels={"figure": "loss and validation IoU per epoch"},
        ),
    log:
        LAYOUT.log("plot_training_curves"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
    script:
        "../workflow_scripts/plot_training_curves.py"


# The same stage for every other head of `heads` (the {head} wildcard): its own split files,
# run folder, logs and constructor arguments (head_params).
use rule train_head as train_head_for_head with:
    input:
        train_h5=HEAD_PROJECT.split_h5("train"),
        val_h5=HEAD_PROJECT.split_h5("val"),
    output:
        summary=HEAD_LAYOUT.training_summary,
    log:
        HEAD_LAYOUT.log("train_head"),
    benchmark:
        HEAD_LAYOUT.benchmark("train_head")
    params:
        layout=job_layout,
        settings=head_params("train_head"),
        runtime=RUNTIME,


use rule sanity_check_head as sanity_check_head_for_head with:
    input:
        train_h5=HEAD_PROJECT.split_h5("train"),
    output:
        sanity=HEAD_LAYOUT.sanity_check,
    log:
        HEAD_LAYOUT.log("sanity_check_head"),
    params:
        layout=job_layout,
        settings=head_params("train_head"),
        runtime=RUNTIME,


use rule plot_training_curves as plot_training_curves_for_head with:
    input:
        summary=HEAD_LAYOUT.training_summary,
    output:
        png=report(
            HEAD_LAYOUT.training_curves,
            category="Training",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "loss and validation IoU per epoch"},
        ),
    log:
        HEAD_LAYOUT.log("plot_training_curves"),
