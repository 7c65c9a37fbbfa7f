# Stage 6: last-layer diagonal Laplace posterior of the trained head (laplace-torch, AsdlGGN).
# best.pt is read from the folder of training_summary.json, the output train_head writes last.


rule fit_laplace:
    input:
        summary=proj("checkpoints", "no_image", "run_{run_id}", "training_summary.json"),
        train_h5=proj("training_data", "no_image", "train.h5"),
        val_h5=proj("training_data", "no_image", "val.h5"),
    output:
        state=proj("laplace", "no_image", "run_{run_id}", "laplace_state.pt"),
        config=proj("laplace", "no_image", "run_{run_id}", "laplace_config.yaml"),
        meta=proj("laplace", "no_image", "run_{run_id}", "posterior_meta.json"),
        grid_figure=report(
            proj("laplace", "no_image", "run_{run_id}", "val_nll_grid.png"),
            category="Laplace",
            subcategory="run {run_id}",
            labels={"figure": "validation NLL over prior precision x temperature"},
        ),
    log:
        proj("logs", "fit_laplace", "run_{run_id}.log"),
    benchmark:
        proj("benchmarks", "fit_laplace", "run_{run_id}.tsv")
    conda:
        "../envs/laplace_head.yaml"
    params:
        run_id="{run_id}",
        laplace=config["laplace"],
    script:
        "../workflow_scripts/fit_laplace.py"
