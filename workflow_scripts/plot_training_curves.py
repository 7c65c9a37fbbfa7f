"""Rule plot_training_curves; stand-alone: ``python -m laplace_head plot-training-curves``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

run_rule(snakemake, lambda: stages.plot_training_curves(snakemake.params.layout))
