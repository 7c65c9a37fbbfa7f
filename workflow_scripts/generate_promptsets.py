"""Stage 2 adapter: prompt-set JSONs for one shard (``rule generate_promptsets``, or stand-alone).

Stand-alone: ``python workflow_scripts/generate_promptsets.py --config config/config.yaml
[--split train] [--force]`` processes every shard of the chosen split(s).
"""

import argparse
from pathlib import Path

import pandas as pd

from laplace_head.config import load_config, project_path
from laplace_head.dataset.sharding import shard_names, shard_rows
from laplace_head.dataset.splits import SPLITS
from laplace_head.prompts.promptsets import generate_promptsets_shard
from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files
from laplace_head.util.console import run_user_facing, setup_logging


def run(split_csv, split, shard, shard_size, prompt_dir, prompt_cfg, summary_path, force=False):
    # Ids, classes and stems stay strings ("007" must not become 7).
    text_columns = ["sample_id", "safe_id", "class", "stem", "image_path", "mask_path"]
    frame = pd.read_csv(split_csv, keep_default_na=False, dtype=dict.fromkeys(text_columns, str))
    summary = generate_promptsets_shard(
        shard_rows(frame, shard, shard_size),
        split,
        prompt_dir,
        prompt_cfg[f"num_promptsets_{split}"],
        prompt_cfg["min_pairs"],
        prompt_cfg["max_pairs"],
        prompt_cfg["prompt_seed"],
        force=force,
    )
    remove_stale_temp_files(Path(summary_path).parent, [Path(summary_path).name])
    atomic_write_json(summary_path, {"shard": shard, **summary})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all)")
    parser.add_argument("--force", action="store_true", help="regenerate existing JSONs")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config))
    shard_size = config["data"]["shard_size"]
    for split in [args.split] if args.split else SPLITS:
        split_csv = project_path(config, "manifests", f"{split}.csv")
        n_samples = len(pd.read_csv(split_csv, usecols=["sample_id"]))
        for shard in shard_names(n_samples, shard_size):
            setup_logging(
                project_path(config, "logs", "generate_promptsets", split, f"shard_{shard}.log")
            )
            summary = project_path(config, "prompt_sets", split, "_shards", f"shard_{shard}.json")
            run(
                split_csv,
                split,
                shard,
                shard_size,
                project_path(config, "prompt_sets"),
                config["prompt_generation"],
                summary,
                args.force,
            )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    params = snakemake.params
    run_user_facing(
        lambda: run(
            snakemake.input.split_csv,
            snakemake.wildcards.split,
            snakemake.wildcards.shard,
            params.shard_size,
            # <project>/prompt_sets/<split>/_shards/shard_NNNN.json -> <project>/prompt_sets
            Path(snakemake.output.summary).parents[2],
            {
                f"num_promptsets_{snakemake.wildcards.split}": params.num_promptsets,
                "min_pairs": params.min_pairs,
                "max_pairs": params.max_pairs,
                "prompt_seed": params.prompt_seed,
            },
            snakemake.output.summary,
        )
    )
elif __name__ == "__main__":
    main()
