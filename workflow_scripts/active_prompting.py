"""Rule active_prompting (stage 8, one shard); stand-alone: ``python -m laplace_head
active-prompting``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params, wildcards = snakemake.params, snakemake.wildcards
run_rule(
    snakemake,
    lambda: stages.active_prompting(
        params.layout, wildcards.split, wildcards.shard, params.settings, params.runtime
    ),
)
