# Stage 6: last-layer diagonal Laplace posterior of the trained head (laplace-torch, AsdlGGN).
# best.pt is read from the folder of training_summary.json, the output train_head writes last.


rule fit_laplace:
    input:
        summary=LAYOUT.training_summary,
        train_h5=LAYOUT.split_h5("train"),
        val_h5=LAYOUT.split_h5("val"),
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
        LAYOUT.log("fit_laplace", "run_{run_id}"),
    benchmark:
        LAYOUT.benchmark("fit_laplace", "run_{run_id}")
    conda:
        "../envs/laplace_head.yaml"
    params:
        run_id="{run_id}",
        settings=PARAMS["fit_laplace"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/fit_laplace.py"
