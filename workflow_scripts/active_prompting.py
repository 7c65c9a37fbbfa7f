"""Rule active_prompting (stage 8, one shard); stand-alone: ``python -m laplace_head
active-prompting``."""

import torch

from laplace_head import stages
from laplace_head.util.console import run_rule

params, wildcards = snakemake.params, snakemake.wildcards
torch.set_num_threads(snakemake.threads)  # the rule's threads: jobs side by side share --cores
run_rule(
    snakemake,
    lambda: stages.active_prompting(
        params.layout, wildcards.split, wildcards.shard, params.settings, params.runtime
    ),
)
