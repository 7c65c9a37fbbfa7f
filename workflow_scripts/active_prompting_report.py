"""Rule active_prompting_report (stage 8 aggregate)."""

from laplace_head import stages
from laplace_head.layout import ACTIVE_PROMPTING_FILES
from laplace_head.util.console import run_rule

output = snakemake.output
run_rule(
    snakemake,
    lambda: stages.active_prompting_report(
        list(snakemake.input.shards),
        {name: output[name] for name in ACTIVE_PROMPTING_FILES},
        snakemake.params.settings,
    ),
)
