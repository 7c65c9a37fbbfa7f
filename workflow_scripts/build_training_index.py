"""Rule build_training_index (stage 4); stand-alone: ``python -m laplace_head
build-training-index``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.build_training_index(params.layout, snakemake.wildcards.split, params.settings),
)
