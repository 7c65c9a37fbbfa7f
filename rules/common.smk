# Parse-time work: config validation, paths, and the input functions that read the manifest
# checkpoint to enumerate shards.
import functools
import sys

from laplace_head.dataset.manifests import read_split_manifest

from laplace_head.config import ConfigError, validate_config
from laplace_head.dataset.sharding import shard_names
from laplace_head.layout import HEAD_VARIANT, SHARD_PATTERN, SPLITS, ProjectLayout
from laplace_head.model.head_variant import HeadVariant
from laplace_head.settings import (
    Runtime,
    ablation_variants,
    config_heads,
    split_settings,
    stage_params,
)


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

RUN_ID = config["training"]["run_id"]
SHARD_SIZE = config["data"]["shard_size"]
# Every output and log path comes from the layout; "{...}" arguments stay Snakemake wildcards.
# PROJECT: stages 1-4 and the sanity panels; LAYOUT: a training run; VARIANT: its posterior
# variant (`snakemake ablation`); RUN: the configured run. All of the seed head (no_image),
# whose rules keep the seed's names and paths; HEAD_PROJECT and HEAD_LAYOUT are the same for
# every other head (the `{head}` wildcard), built by the `<rule>_for_head` rules.
PROJECT = ProjectLayout(config["data"]["project_root"])
LAYOUT = PROJECT.with_run("{run_id}")
VARIANT = LAYOUT.for_posterior("{variant}")
RUN = LAYOUT.with_run(RUN_ID)
HEAD_PROJECT = PROJECT.for_head("{head}")
HEAD_LAYOUT = HEAD_PROJECT.with_run("{run_id}")
HEAD_VARIANT_LAYOUT = HEAD_LAYOUT.for_posterior("{variant}")
HEADS = config_heads(config)  # the heads `rule all` builds
OTHER_HEADS = [head for head in HeadVariant if head.value != HEAD_VARIANT]
# Result settings per rule (rerun triggers) and the runtime settings (not triggers); the seed
# head's (stage 5 of another head: head_params).
PARAMS = stage_params(config, head=HEAD_VARIANT)
RUNTIME = Runtime.from_config(config)
# The rules that run on sam.device (stages 3 and 8) take a slot of the `gpu` resource pool only
# when that device may be a GPU: with `sam.device: cpu` their jobs run side by side under --cores.
SAM_DEVICE_GPU_SLOTS = 0 if RUNTIME.sam_device == "cpu" else 1
AP_ENABLED = config["active_prompting"]["enabled"]  # stage 8 in `rule all`
AP_SPLIT = PARAMS["active_prompting"]["split"]  # the split stage 8 clicks on


wildcard_constraints:
    split="|".join(SPLITS),
    shard=SHARD_PATTERN,
    run_id=r"[A-Za-z0-9_.-]+",
    variant=r"[A-Za-z0-9_]+",
    head="|".join(head.value for head in OTHER_HEADS),


def job_layout(wildcards):
    """The layout of one job, bound to its run and posterior variant: the script derives every
    path from it. A ProjectLayout is not a plain value, so Snakemake records no rerun trigger
    for it (the paths are the job's inputs and outputs already)."""
    layout = PROJECT
    if "head" in wildcards.keys():
        layout = layout.for_head(wildcards.head)
    if "run_id" in wildcards.keys():
        layout = layout.with_run(wildcards.run_id)
    if "variant" in wildcards.keys():
        layout = layout.for_posterior(wildcards.variant)
    return layout


def get_promptset_settings(wildcards):
    """Stage 2's settings for the job's split (its own num_promptsets)."""
    return split_settings(PARAMS["generate_promptsets"], wildcards.split)


@functools.lru_cache(maxsize=None)
def _split_size(split_csv):
    return len(read_split_manifest(split_csv))


def get_shards(split):
    """Shard names of a split; evaluated after the manifest checkpoint has run."""
    manifests = checkpoints.build_manifests.get()
    return shard_names(_split_size(manifests.output[split]), SHARD_SIZE)


def shard_summaries(stage, split):
    """The per-shard summary files of a stage (prompt_sets or sam_precompute) for a split."""
    return [PROJECT.shard_summary(stage, split, shard) for shard in get_shards(split)]


def get_precompute_shard_summaries(wildcards):
    return shard_summaries("sam_precompute", wildcards.split)


def get_all_prompt_shard_summaries(wildcards):
    return [path for split in SPLITS for path in shard_summaries("prompt_sets", split)]


def get_all_precompute_shard_summaries(wildcards):
    return [
        path for split in SPLITS for path in shard_summaries("sam_precompute", split)
    ]


def get_active_prompting_shards(wildcards):
    """The stage-8 shard JSONLs of the configured split, for one run (of the job's head)."""
    run = job_layout(wildcards)
    return [
        run.active_prompting_shard(AP_SPLIT, shard) for shard in get_shards(AP_SPLIT)
    ]


def head_params(stage):
    """The result settings of ``stage`` for the job's head (rerun triggers, as PARAMS)."""
    return lambda wildcards: stage_params(config, head=wildcards.head)[stage]


def variant_params(stage):
    """The result settings of ``stage`` for the job's variant (rerun triggers, as PARAMS)."""
    return lambda wildcards: stage_params(config, wildcards.variant)[stage]


def get_variant_active_prompting_shards(wildcards):
    """The stage-8 shard JSONLs of one variant and split (of the job's head)."""
    run = job_layout(wildcards)
    split = wildcards.split
    return [run.active_prompting_shard(split, shard) for shard in get_shards(split)]


def get_ablation_inputs(wildcards):
    """Every head's every variant's posterior meta, stage-7 metrics and stage-8 report per
    split."""
    inputs = LAYOUT.with_run(wildcards.run_id).ablation_inputs(
        ablation_variants(config), config["ablation"]["splits"], HEADS
    )
    return [
        path
        for files in inputs.values()
        for path in (files["meta"], files["eval"], *files["clicks"].values())
    ]


def head_runs():
    """The configured run of every head of ``heads``."""
    return [RUN.for_head(head) for head in HEADS]


def get_final_targets():
    """What `snakemake` with no target builds: every stage, every split, the configured run
    of every head of ``heads``."""
    targets = [PROJECT.manifest("all_samples"), PROJECT.panels_listing("train")]
    for run in head_runs():
        targets += [
            *[run.split_h5(split) for split in SPLITS],
            run.training_summary,
            run.training_curves,
            run.laplace_file("meta"),
            run.eval_file("metrics"),
            *([run.active_prompting_report(AP_SPLIT)["metrics"]] if AP_ENABLED else []),
        ]
    return targets


# One run at a time on the project folder (laplace_head.util.project_lock): the main snakemake
# process holds the lock; a dry-run runs no handler and jobs run with --no-hooks.
onstart:
    from laplace_head.util.project_lock import ProjectLock, ProjectLockedError

    try:
        ProjectLock(PROJECT.lock).acquire()
    except ProjectLockedError as error:
        sys.stderr.write(f"\nERROR: {error}\n\n")
        raise SystemExit(1)


onsuccess:
    from laplace_head.util.project_lock import ProjectLock

    ProjectLock(PROJECT.lock).release()


onerror:
    from laplace_head.util.project_lock import ProjectLock

    ProjectLock(PROJECT.lock).release()
