# Stage 6: the Laplace posterior of the trained head (laplace.target_layer x laplace.approx;
# laplace-torch). best.pt is the run's; training_summary.json, written last by train_head,
# stands for it as the input.


rule fit_laplace:
    input:
        summary=LAYOUT.training_summary,
        train_h5=PROJECT.split_h5("train"),
        val_h5=PROJECT.split_h5("val"),
    output:
        state=LAYOUT.laplace_file("state"),
        config=LAYOUT.laplace_file("config"),
        meta=LAYOUT.laplace_file("meta"),
        grid_figure=report(
            LAYOUT.laplace_file("grid_figure"),
            category="Laplace",
            subcategory="run {run_id}",
            labels={"figure": "validation NLL over prior precision x temperature"},
        ),
    log:
        LAYOUT.log("fit_laplace"),
    benchmark:
        LAYOUT.benchmark("fit_laplace")
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["fit_laplace"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/fit_laplace.py"


use rule fit_laplace as fit_laplace_for_head with:
    input:
        summary=HEAD_LAYOUT.training_summary,
        train_h5=HEAD_PROJECT.split_h5("train"),
        val_h5=HEAD_PROJECT.split_h5("val"),
    output:
        state=HEAD_LAYOUT.laplace_file("state"),
        config=HEAD_LAYOUT.laplace_file("config"),
        meta=HEAD_LAYOUT.laplace_file("meta"),
        grid_figure=report(
            HEAD_LAYOUT.laplace_file("grid_figure"),
            category="Laplace",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "validation NLL over prior precision x temperature"},
        ),
    log:
        HEAD_LAYOUT.log("fit_laplace"),
    benchmark:
        HEAD_LAYOUT.benchmark("fit_laplace")
