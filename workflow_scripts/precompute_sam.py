"""Rule precompute_sam (stage 3, one shard); stand-alone: ``python -m laplace_head
precompute-sam``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.precompute_sam(
        params.runtime.project_root,
        [snakemake.wildcards.split],
        snakemake.wildcards.shard,
        params.settings,
        params.runtime,
        split_csv=snakemake.input.split_csv,
        summary_path=snakemake.output.summary,
    ),
)
