"""Rule generate_promptsets (stage 2, one shard); stand-alone: ``python -m laplace_head
generate-promptsets``."""

from pathlib import Path

from laplace_head import stages
from laplace_head.util.console import run_rule

summary = Path(snakemake.output.summary)  # <project>/prompt_sets/<split>/_shards/shard_NNNN.json
run_rule(
    snakemake,
    lambda: stages.generate_promptsets(
        snakemake.input.split_csv,
        snakemake.wildcards.split,
        snakemake.wildcards.shard,
        summary.parents[2],  # the prompt_sets folder
        summary,
        {name: snakemake.params[name] for name in snakemake.params.keys()},
    ),
)
