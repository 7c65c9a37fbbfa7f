"""Rule fit_laplace (stage 6); stand-alone: ``python -m laplace_head fit-laplace [--force]``."""

from pathlib import Path

from laplace_head import stages
from laplace_head.layout import BEST_CHECKPOINT
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.fit_laplace(
        Path(snakemake.input.summary).with_name(BEST_CHECKPOINT),
        snakemake.input.train_h5,
        snakemake.input.val_h5,
        Path(snakemake.output.state).parent,
        params.run_id,
        params.settings,
        params.runtime,
        force=False,  # reuse the last fit when best.pt, data and settings are unchanged
    ),
)
