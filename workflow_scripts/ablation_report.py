"""Rule ablation_report (`snakemake ablation`): one table and figure over the posterior variants."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(snakemake, lambda: stages.ablation_report(params.layout, params.settings))
