"""Rule pack_hdf5 (stage 4.5); stand-alone: ``python -m laplace_head pack-hdf5``."""

from laplace_head import stages
from laplace_head.util.console import run_rule

params = snakemake.params
run_rule(
    snakemake,
    lambda: stages.pack_hdf5(
        params.layout, snakemake.wildcards.split, params.settings, params.runtime
    ),
)
