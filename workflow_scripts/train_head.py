"""Rule train_head (stage 5); resumes by itself after a kill. Stand-alone: ``python -m
laplace_head train-head --run_id v1 [--resume|--force]``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.train_head(params.layout, params.settings, params.runtime, resume="auto"),
)
