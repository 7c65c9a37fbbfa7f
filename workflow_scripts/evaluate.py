"""Rule evaluate (stage 7); stand-alone: ``python -m laplace_head evaluate``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(snakemake, lambda: stages.evaluate(params.layout, params.settings, params.runtime))
