"""Rule build_training_index (stage 4); stand-alone: ``python -m laplace_head
build-training-index``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

run_rule(
    snakemake,
    lambda: stages.build_training_index(
        snakemake.wildcards.split,
        snakemake.input.split_csv,
        list(snakemake.input.summaries),
        snakemake.params.precompute_dir,
        snakemake.params.prompt_sets_dir,
        snakemake.output.index,
        snakemake.output.failures,
    ),
)
