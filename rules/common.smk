# Parse-time work: config validation, paths, and the input functions that read the manifest
# checkpoint to enumerate shards.
import functools
import sys

import pandas as pd

from laplace_head.config import ConfigError, validate_config
from laplace_head.dataset.sharding import shard_names


def _config_files():
    """Config files in the order Snakemake merged them (later ones win)."""
    files = [str(f) for f in workflow.configfiles]
    overrides = [
        str(f) for f in (getattr(workflow, "overwrite_configfiles", None) or [])
    ]
    return [f for f in files if f not in overrides] + overrides


try:
    _resolved = validate_config(
        config, config_name=_config_files()[-1], sources=_config_files()
    )
except ConfigError as error:
    sys.stderr.write(f"\nConfiguration error: {error}\n\n")
    raise SystemExit(1)
config.clear()
config.update(_resolved)

PROJECT = config["data"]["project_root"].rstrip("/")
RUN_ID = config["training"]["run_id"]
SPLITS = ["train", "val", "test"]
SHARD_SIZE = config["data"]["shard_size"]


wildcard_constraints:
    split="train|val|test",
    shard=r"\d{4}",
    run_id=r"[A-Za-z0-9_.-]+",


def proj(*parts):
    """A path under data.project_root."""
    return "/".join([PROJECT, *parts])


def get_num_promptsets(wildcards):
    return config["prompt_generation"][f"num_promptsets_{wildcards.split}"]


@functools.lru_cache(maxsize=None)
def _split_size(split_csv):
    return len(pd.read_csv(split_csv, usecols=["sample_id"]))


def get_shards(split):
    """Shard names of a split; evaluated after the manifest checkpoint has run."""
    manifests = checkpoints.build_manifests.get()
    return shard_names(_split_size(manifests.output[split]), SHARD_SIZE)


def shard_summaries(stage_dir, split):
    """The per-shard summary files of a stage (prompt_sets or sam_precompute) for a split."""
    return expand(
        proj(stage_dir, "{split}", "_shards", "shard_{shard}.json"),
        split=split,
        shard=get_shards(split),
    )


def get_precompute_shard_summaries(wildcards):
    return shard_summaries("sam_precompute", wildcards.split)


def get_all_prompt_shard_summaries(wildcards):
    return [path for split in SPLITS for path in shard_summaries("prompt_sets", split)]


def get_all_precompute_shard_summaries(wildcards):
    return [
        path for split in SPLITS for path in shard_summaries("sam_precompute", split)
    ]


def get_final_targets():
    """What `snakemake` with no target builds: every stage, every split, the configured run."""
    return [
        proj("manifests", "all_samples.csv"),
        *expand(proj("training_data", "no_image", "{split}.h5"), split=SPLITS),
        proj("reports", "debug_panels", "train_panels.json"),
        proj("checkpoints", "no_image", f"run_{RUN_ID}", "training_summary.json"),
        proj("checkpoints", "no_image", f"run_{RUN_ID}", "training_curves.png"),
        proj("laplace", "no_image", f"run_{RUN_ID}", "posterior_meta.json"),
        proj("reports", "eval", f"run_{RUN_ID}", "metrics.json"),
    ]
