# On-demand sanity panels (image / GT / base mask / base logits / pos map / neg map).


rule visualize_sanity:
    input:
        h5=LAYOUT.split_h5("{split}"),
    output:
        listing=LAYOUT.panels_listing("{split}"),
        overview=report(
            LAYOUT.panels_overview("{split}"),
            category="Sanity panels",
            subcategory="{split}",
            labels={
                "figure": "image / GT / base mask / base logits / pos map / neg map"
            },
        ),
    log:
        LAYOUT.log("visualize_sanity", "{split}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        settings=PARAMS["visualize_sanity"],
    script:
        "../workflow_scripts/visualize_sanity.py"
