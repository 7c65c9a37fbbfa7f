"""Rule visualize_sanity; stand-alone: ``python -m laplace_head visualize-sanity --n 8``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.visualize_sanity(params.layout, snakemake.wildcards.split, params.settings),
)
