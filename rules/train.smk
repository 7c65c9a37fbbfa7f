# Stage 5: train the head. The only declared output is training_summary.json, written last:
# Snakemake deletes the declared outputs of an interrupted job, so declaring last.pt,
# optimizer_last.pt, ... would let it delete exactly the files that resume needs. Re-running
# the same command after a kill resumes from the last completed epoch (resume="auto").
# The head and training settings that change the weights are params: changing one under an
# existing run id re-runs train_head, which then refuses and names the changed keys (use a new
# training.run_id). Settings that do not change the result are left out.
TRAINING_KEYS_NOT_IN_RESULT = {"run_id", "num_workers", "device", "in_memory"}


rule train_head:
    input:
        train_h5=proj("training_data", "no_image", "train.h5"),
        val_h5=proj("training_data", "no_image", "val.h5"),
    output:
        summary=proj("checkpoints", "no_image", "run_{run_id}", "training_summary.json"),
    log:
        proj("logs", "train_head", "run_{run_id}.log"),
    benchmark:
        proj("benchmarks", "train_head", "run_{run_id}.tsv")
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    params:
        run_id="{run_id}",
        head=config["head"],
        training={
            key: value
            for key, value in config["training"].items()
            if key not in TRAINING_KEYS_NOT_IN_RESULT
        },
    script:
        "../workflow_scripts/train_head.py"


rule sanity_check_head:
    input:
        train_h5=proj("training_data", "no_image", "train.h5"),
    output:
        sanity=proj("checkpoints", "no_image", "run_{run_id}", "sanity_check.json"),
    log:
        proj("logs", "sanity_check_head", "run_{run_id}.log"),
    conda:
        "../envs/laplace_head.yaml"
    resources:
        gpu=1,
    params:
        run_id="{run_id}",
    script:
        "../workflow_scripts/train_head.py"


rule plot_training_curves:
    input:
        summary=proj("checkpoints", "no_image", "run_{run_id}", "training_summary.json"),
    output:
        png=report(
            proj("checkpoints", "no_image", "run_{run_id}", "training_curves.png"),
            category="Training",
            subcategory="run {run_id}",
            labels={"figure": "loss and validation IoU per epoch"},
        ),
    log:
        proj("logs", "plot_training_curves", "run_{run_id}.log"),
    conda:
        "../envs/laplace_head.yaml"
    script:
        "../workflow_scripts/plot_training_curves.py"
