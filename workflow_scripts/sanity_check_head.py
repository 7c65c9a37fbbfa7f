"""Rule sanity_check_head; stand-alone: ``python -m laplace_head train-head --sanity_check``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.sanity_check_head(params.layout, params.settings, params.runtime),
)
