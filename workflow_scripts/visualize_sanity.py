"""Sanity panels adapter: 6-panel PNGs of packed rows (``rule visualize_sanity``, or stand-alone).

Stand-alone: ``python workflow_scripts/visualize_sanity.py --config config/config.yaml --n 8
--split train [--seed 0]`` reads ``training_data/no_image/<split>.h5`` (or, when it is not
packed yet, ``<split>_index.csv``) and writes ``reports/debug_panels/<split>__*.png``.
"""

import argparse
from pathlib import Path

from laplace_head.config import load_config
from laplace_head.dataset.splits import SPLITS
from laplace_head.evaluation.sanity_panels import write_overview, write_sanity_panels
from laplace_head.util.console import run_user_facing, setup_logging


def run(source, out_dir, n, seed, split, listing_json=None, overview_png=None) -> None:
    panels = write_sanity_panels(
        source, out_dir, n=n, seed=seed, split=split, listing_json=listing_json
    )
    if overview_png:
        write_overview(panels, overview_png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split to show")
    parser.add_argument("--n", type=int, default=8, help="number of panels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row choice")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    root = Path(config["data"]["project_root"])
    source = root / "training_data" / "no_image" / f"{args.split}.h5"
    if not source.is_file():
        source = source.with_name(f"{args.split}_index.csv")
    setup_logging(root / "logs" / "visualize_sanity" / f"{args.split}.log")
    run_user_facing(
        lambda: run(source, root / "reports" / "debug_panels", args.n, args.seed, args.split)
    )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            snakemake.input.h5,
            Path(snakemake.output.listing).parent,
            int(snakemake.params.get("n", 8)),
            int(snakemake.params.get("seed", 0)),
            snakemake.wildcards.split,
            snakemake.output.listing,
            snakemake.output.overview,
        )
    )
elif __name__ == "__main__":
    main()
