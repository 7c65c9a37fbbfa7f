"""Rule active_prompting (stage 8, one shard); stand-alone: ``python -m laplace_head
active-prompting``."""

from pathlib import Path

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.active_prompting(
        snakemake.input.split_csv,
        snakemake.wildcards.shard,
        Path(snakemake.input.state).parent,
        snakemake.output.jsonl,
        params.settings,
        params.runtime,
    ),
)
