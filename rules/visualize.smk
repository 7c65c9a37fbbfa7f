# On-demand sanity panels (image / GT / SAM mask / SAM logits / pos map / neg map).


rule visualize_sanity:
    input:
        h5=proj("training_data", "no_image", "{split}.h5"),
    output:
        listing=proj("reports", "debug_panels", "{split}_panels.json"),
        overview=report(
            proj("reports", "debug_panels", "{split}_overview.png"),
            category="Sanity panels",
            subcategory="{split}",
            labels={
                "figure": "image / GT / base mask / base logits / pos map / neg map"
            },
        ),
    log:
        proj("logs", "visualize_sanity", "{split}.log"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        n=8,
        seed=0,
    script:
        "../workflow_scripts/visualize_sanity.py"
