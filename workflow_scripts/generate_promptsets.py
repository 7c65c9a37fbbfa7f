"""Rule generate_promptsets (stage 2, one shard); stand-alone: ``python -m laplace_head
generate-promptsets``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params, wildcards = snakemake.params, snakemake.wildcards
run_rule(
    snakemake,
    lambda: stages.generate_promptsets(
        params.layout, wildcards.split, wildcards.shard, params.settings
    ),
)
