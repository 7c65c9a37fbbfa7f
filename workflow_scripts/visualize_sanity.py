"""Rule visualize_sanity; stand-alone: ``python -m laplace_head visualize-sanity --n 8``."""

from pathlib import Path

from laplace_head import stages
from laplace_head.util.console import run_rule

run_rule(
    snakemake,
    lambda: stages.visualize_sanity(
        snakemake.input.h5,
        snakemake.wildcards.split,
        Path(snakemake.output.listing).parent,
        snakemake.params.settings,
        snakemake.output.listing,
        snakemake.output.overview,
    ),
)
