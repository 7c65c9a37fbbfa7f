"""Rule precompute_sam (stage 3, one shard); stand-alone: ``python -m laplace_head
precompute-sam``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params, wildcards = snakemake.params, snakemake.wildcards
run_rule(
    snakemake,
    lambda: stages.precompute_sam(
        params.layout, [wildcards.split], wildcards.shard, params.settings, params.runtime
    ),
)
