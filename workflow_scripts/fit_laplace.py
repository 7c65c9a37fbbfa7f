"""Rule fit_laplace (stage 6); stand-alone: ``python -m laplace_head fit-laplace [--force]``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.fit_laplace(
        params.layout,
        params.settings,
        params.runtime,
        force=False,  # reuse the last fit when best.pt, data and settings are unchanged
    ),
)
