# Stage 7: base segmenter vs MAP head vs MAP + temperature scaling vs Laplace head on the test
# split (IoU, Dice, NLL, Brier, ECE, reliability, uncertainty-vs-error AUROC), with figures.


rule evaluate:
    input:
        state=proj("laplace", "no_image", "run_{run_id}", "laplace_state.pt"),
        meta=proj("laplace", "no_image", "run_{run_id}", "posterior_meta.json"),
        test_h5=proj("training_data", "no_image", "test.h5"),
        val_h5=proj("training_data", "no_image", "val.h5"),
    output:
        metrics=proj("reports", "eval", "run_{run_id}", "metrics.json"),
        table=report(
            proj("reports", "eval", "run_{run_id}", "metrics.csv"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "metrics table"},
        ),
        markdown=proj("reports", "eval", "run_{run_id}", "metrics.md"),
        reliability=report(
            proj("reports", "eval", "run_{run_id}", "reliability.png"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "reliability diagrams"},
        ),
        examples=report(
            proj("reports", "eval", "run_{run_id}", "uncertainty_examples.png"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "uncertainty maps and suggested clicks"},
        ),
    log:
        proj("logs", "evaluate", "run_{run_id}.log"),
    benchmark:
        proj("benchmarks", "evaluate", "run_{run_id}.tsv")
    conda:
        "../envs/laplace_head.yaml"
    params:
        run_id="{run_id}",
        settings={
            "n_posterior_samples": config["laplace"]["n_posterior_samples"],
            "ece_bins": config["laplace"]["ece_bins"],
            "prompt_sigma": config["prompt_generation"]["gaussian_sigma"],
            "max_pixels_calibration": config["laplace"]["max_pixels_fit"],
            "seed": config["laplace"]["seed"],
        },
    script:
        "../workflow_scripts/evaluate.py"
