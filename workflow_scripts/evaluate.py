"""Rule evaluate (stage 7); stand-alone: ``python -m laplace_head evaluate``."""

from pathlib import Path

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.evaluate(
        Path(snakemake.input.state).parent,
        snakemake.input.test_h5,
        snakemake.input.val_h5,
        Path(snakemake.output.metrics).parent,
        params.run_id,
        params.settings,
        params.runtime,
    ),
)
