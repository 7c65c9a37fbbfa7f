"""Stage 4 adapter: the training index of one split (``rule build_training_index``, or stand-alone).

Stand-alone: ``python workflow_scripts/build_training_index.py --config config/config.yaml
[--split train]`` indexes the chosen split (default: all three).
"""

import argparse
from pathlib import Path

from laplace_head.cache.index import write_training_index
from laplace_head.config import load_config, validate_config
from laplace_head.dataset.splits import SPLITS
from laplace_head.util.console import run_user_facing, setup_logging


def run(project_root, split, split_csv, summaries, index_csv, failures_csv) -> None:
    root = Path(project_root)
    write_training_index(
        split,
        split_csv,
        root / "sam_precompute" / split,
        summaries,
        index_csv,
        failures_csv,
        prompt_sets_dir=root / "prompt_sets" / split,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all)")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    root = Path(config["data"]["project_root"])
    out_dir = root / "training_data" / "no_image"
    for split in [args.split] if args.split else SPLITS:
        setup_logging(root / "logs" / "build_training_index" / f"{split}.log")
        summaries = sorted((root / "sam_precompute" / split / "_shards").glob("shard_*.json"))
        run_user_facing(
            lambda split=split, summaries=summaries: run(
                root,
                split,
                root / "manifests" / f"{split}.csv",
                summaries,
                out_dir / f"{split}_index.csv",
                out_dir / f"{split}_failures.csv",
            )
        )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            validate_config(snakemake.config, check_paths=False)["data"]["project_root"],
            snakemake.wildcards.split,
            snakemake.input.split_csv,
            list(snakemake.input.summaries),
            snakemake.output.index,
            snakemake.output.failures,
        )
    )
elif __name__ == "__main__":
    main()
