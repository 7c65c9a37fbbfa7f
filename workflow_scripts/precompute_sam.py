"""Stage 3 (precompute_sam): base-segmenter logits and prompt maps for one shard of a split.

Under Snakemake: inputs ``split_csv`` (the split manifest) and ``prompt_marker`` (ordering only),
wildcards ``split`` and ``shard``, output ``summary`` (the shard summary JSON), ``log``.
Stand-alone: ``python workflow_scripts/precompute_sam.py --config config/config.yaml
[--split train] [--shard 0000]`` (no ``--split``: every split; no ``--shard``: every shard,
with the segmenter loaded once).
"""

import argparse

from laplace_head.cache.precompute import run_precompute
from laplace_head.config import load_config, project_path, validate_config
from laplace_head.util.console import run_user_facing, setup_logging

SPLITS = ("train", "val", "test")


def settings(config: dict) -> dict:
    """The explicit arguments of :func:`run_precompute` taken from the resolved config."""
    sam, data = config["sam"], config["data"]
    return {
        "project_root": data["project_root"],
        "shard_size": data["shard_size"],
        "sigma": config["prompt_generation"]["gaussian_sigma"],
        "backend": sam["backend"],
        "checkpoint": sam["checkpoint"],
        "model_type": sam["model_type"],
        "device": sam["device"],
        "random_walker_max_side": sam["random_walker_max_side"],
        "random_walker_beta": sam["random_walker_beta"],
        "wandb_config": config["wandb"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="workflow config YAML")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all)")
    parser.add_argument("--shard", help="only this shard, e.g. 0000 (default: all)")
    args = parser.parse_args(argv)
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    setup_logging(project_path(config, "logs", "precompute_sam", "standalone.log"))
    splits = [args.split] if args.split else list(SPLITS)
    run_user_facing(lambda: run_precompute(splits=splits, shard=args.shard, **settings(config)))


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run_precompute(
            splits=[snakemake.wildcards.split],
            shard=snakemake.wildcards.shard,
            split_csv=snakemake.input.split_csv,
            summary_path=snakemake.output.summary,
            **settings(validate_config(snakemake.config, check_paths=False)),
        )
    )
elif __name__ == "__main__":
    main()
