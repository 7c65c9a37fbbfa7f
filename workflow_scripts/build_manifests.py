"""Rule build_manifests (stage 1); stand-alone: ``python -m laplace_head build-manifests``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.build_manifests(
        params.layout, params.settings, params.runtime, snakemake.threads
    ),
)
