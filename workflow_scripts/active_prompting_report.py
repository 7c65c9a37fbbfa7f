"""Rule active_prompting_report (stage 8 aggregate; a posterior variant: one per split)."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
split = snakemake.wildcards.get("split")  # None: the run's configured split
run_rule(snakemake, lambda: stages.active_prompting_report(params.layout, params.settings, split))
