# `snakemake ablation`: every posterior variant of config ablation.variants, fitted on the same
# trained head (stage 6), evaluated by stage 7 and clicked on by stage 8 on every split of
# ablation.splits, for every head of `heads` (the `_for_head` rules: heads other than
# no_image); one summary over heads x variants x click rules (choose on val, report on test)
# with a table and a figure.


use rule fit_laplace as fit_laplace_variant with:
    output:
        state=VARIANT.laplace_file("state"),
        config=VARIANT.laplace_file("config"),
        meta=VARIANT.laplace_file("meta"),
        grid_figure=VARIANT.laplace_file("grid_figure"),
    log:
        VARIANT.log("fit_laplace"),
    benchmark:
        VARIANT.benchmark("fit_laplace")
    params:
        layout=job_layout,
        settings=variant_params("fit_laplace"),
        runtime=RUNTIME,


use rule evaluate as evaluate_variant with:
    input:
        state=VARIANT.laplace_file("state"),
        meta=VARIANT.laplace_file("meta"),
        test_h5=PROJECT.split_h5("test"),
        val_h5=PROJECT.split_h5("val"),
    output:
        metrics=VARIANT.eval_file("metrics"),
        table=VARIANT.eval_file("table"),
        markdown=VARIANT.eval_file("markdown"),
        reliability=VARIANT.eval_file("reliability"),
        examples=VARIANT.eval_file("examples"),
    log:
        VARIANT.log("evaluate"),
    benchmark:
        VARIANT.benchmark("evaluate")


use rule active_prompting as active_prompting_variant with:
    input:
        split_csv=PROJECT.manifest("{split}"),
        state=VARIANT.laplace_file("state"),
        meta=VARIANT.laplace_file("meta"),
    output:
        jsonl=VARIANT.active_prompting_shard("{split}", "{shard}"),
    log:
        VARIANT.log("active_prompting", "{split}", "{shard}"),
    benchmark:
        VARIANT.benchmark("active_prompting", "{split}", "{shard}")
    params:
        layout=job_layout,
        settings=variant_params("active_prompting"),
        runtime=RUNTIME,


use rule active_prompting_report as active_prompting_report_variant with:
    input:
        shards=get_variant_active_prompting_shards,
    output:
        metrics=VARIANT.active_prompting_report("{split}")["metrics"],
        table=VARIANT.active_prompting_report("{split}")["table"],
        markdown=VARIANT.active_prompting_report("{split}")["markdown"],
        curves=VARIANT.active_prompting_report("{split}")["curves"],
    log:
        VARIANT.log("active_prompting_report", "{split}"),
    params:
        layout=job_layout,
        settings=variant_params("active_prompting"),


use rule fit_laplace_variant as fit_laplace_variant_for_head with:
    input:
        summary=HEAD_LAYOUT.training_summary,
        train_h5=HEAD_PROJECT.split_h5("train"),
        val_h5=HEAD_PROJECT.split_h5("val"),
    output:
        state=HEAD_VARIANT_LAYOUT.laplace_file("state"),
        config=HEAD_VARIANT_LAYOUT.laplace_file("config"),
        meta=HEAD_VARIANT_LAYOUT.laplace_file("meta"),
        grid_figure=HEAD_VARIANT_LAYOUT.laplace_file("grid_figure"),
    log:
        HEAD_VARIANT_LAYOUT.log("fit_laplace"),
    benchmark:
        HEAD_VARIANT_LAYOUT.benchmark("fit_laplace")


use rule evaluate_variant as evaluate_variant_for_head with:
    input:
        state=HEAD_VARIANT_LAYOUT.laplace_file("state"),
        meta=HEAD_VARIANT_LAYOUT.laplace_file("meta"),
        test_h5=HEAD_PROJECT.split_h5("test"),
        val_h5=HEAD_PROJECT.split_h5("val"),
    output:
        metrics=HEAD_VARIANT_LAYOUT.eval_file("metrics"),
        table=HEAD_VARIANT_LAYOUT.eval_file("table"),
        markdown=HEAD_VARIANT_LAYOUT.eval_file("markdown"),
        reliability=HEAD_VARIANT_LAYOUT.eval_file("reliability"),
        examples=HEAD_VARIANT_LAYOUT.eval_file("examples"),
    log:
        HEAD_VARIANT_LAYOUT.log("evaluate"),
    benchmark:
        HEAD_VARIANT_LAYOUT.benchmark("evaluate")


use rule active_prompting_variant as active_prompting_variant_for_head with:
    input:
        split_csv=PROJECT.manifest("{split}"),
        state=HEAD_VARIANT_LAYOUT.laplace_file("state"),
        meta=HEAD_VARIANT_LAYOUT.laplace_file("meta"),
    output:
        jsonl=HEAD_VARIANT_LAYOUT.active_prompting_shard("{split}", "{shard}"),
    log:
        HEAD_VARIANT_LAYOUT.log("active_prompting", "{split}", "{shard}"),
    benchmark:
        HEAD_VARIANT_LAYOUT.benchmark("active_prompting", "{split}", "{shard}")


use rule active_prompting_report_variant as active_prompting_report_variant_for_head with:
    output:
        metrics=HEAD_VARIANT_LAYOUT.active_prompting_report("{split}")["metrics"],
        table=HEAD_VARIANT_LAYOUT.active_prompting_report("{split}")["table"],
        markdown=HEAD_VARIANT_LAYOUT.active_prompting_report("{split}")["markdown"],
        curves=HEAD_VARIANT_LAYOUT.active_prompting_report("{split}")["curves"],
    log:
        HEAD_VARIANT_LAYOUT.log("active_prompting_report", "{split}"),


rule ablation_report:
    input:
        get_ablation_inputs,
    output:
        metrics=LAYOUT.ablation_file("metrics"),
        table=LAYOUT.ablation_file("table"),
        markdown=LAYOUT.ablation_file("markdown"),
        figure=report(
            LAYOUT.ablation_file("figure"),
            category="Ablation",
            subcategory="run {run_id}",
            labels={
                "figure": "heads x posterior variants: BALD error-AUROC vs NLL, clicks-to-IoU"
            },
        ),
    log:
        LAYOUT.log("ablation_report"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["ablation"],
    script:
        "../workflow_scripts/ablation_report.py"


rule ablation:
    input:
        RUN.ablation_file("metrics"),
