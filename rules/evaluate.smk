# Stage 7: base segmenter vs MAP head vs MAP + temperature scaling vs Laplace head on the test
# split (IoU, Dice, NLL, Brier, ECE, reliability, uncertainty-vs-error AUROC), with figures.


rule evaluate:
    input:
        state=LAYOUT.laplace_file("state"),
        meta=LAYOUT.laplace_file("meta"),
        test_h5=PROJECT.split_h5("test"),
        val_h5=PROJECT.split_h5("val"),
    output:
        metrics=LAYOUT.eval_file("metrics"),
        table=report(
            LAYOUT.eval_file("table"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "metrics table"},
        ),
        markdown=LAYOUT.eval_file("markdown"),
        reliability=report(
            LAYOUT.eval_file("reliability"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "reliability diagrams"},
        ),
        examples=report(
            LAYOUT.eval_file("examples"),
            category="Evaluation",
            subcategory="run {run_id}",
            labels={"figure": "uncertainty maps and suggested clicks"},
        ),
    log:
        LAYOUT.log("evaluate"),
    benchmark:
        LAYOUT.benchmark("evaluate")
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["evaluate"],
        runtime=RUNTIME,
    script:
        "../workflow_scripts/evaluate.py"


use rule evaluate as evaluate_for_head with:
    input:
        state=HEAD_LAYOUT.laplace_file("state"),
        meta=HEAD_LAYOUT.laplace_file("meta"),
        test_h5=HEAD_PROJECT.split_h5("test"),
        val_h5=HEAD_PROJECT.split_h5("val"),
    output:
        metrics=HEAD_LAYOUT.eval_file("metrics"),
        table=report(
            HEAD_LAYOUT.eval_file("table"),
            category="Evaluation",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "metrics table"},
        ),
        markdown=HEAD_LAYOUT.eval_file("markdown"),
        reliability=report(
            HEAD_LAYOUT.eval_file("reliability"),
            category="Evaluation",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "reliability diagrams"},
        ),
        examples=report(
            HEAD_LAYOUT.eval_file("examples"),
            category="Evaluation",
            subcategory="{head} head, run {run_id}",
            labels={"figure": "uncertainty maps and suggested clicks"},
        ),
    log:
        HEAD_LAYOUT.log("evaluate"),
    benchmark:
        HEAD_LAYOUT.benchmark("evaluate")
