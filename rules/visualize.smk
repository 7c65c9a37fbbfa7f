# On-demand sanity panels (image / GT / base mask / base logits / pos map / neg map).


rule visualize_sanity:
    input:
        h5=PROJECT.split_h5("{split}"),
    output:
        listing=PROJECT.panels_listing("{split}"),
        overview=report(
            PROJECT.panels_overview("{split}"),
            category="Sanity panels",
            subcategory="{split}",
            labels={
                "figure": "image / GT / base mask / base logits / pos map / neg map"
            },
        ),
    log:
        PROJECT.log("visualize_sanity", "{split}"),
    conda:
        "../envs/laplace_head.yaml"
    params:
        layout=job_layout,
        settings=PARAMS["visualize_sanity"],
    script:
        "../workflow_scripts/visualize_sanity.py"
