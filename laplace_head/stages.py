"""One function per rule: what a workflow script and the matching stand-alone command call.

Each takes a :class:`~laplace_head.layout.ProjectLayout` bound to the job's run and posterior
variant (stages 1-4 and the sanity panels: the project's layout, without a run), the job's split
and shard where it has them, the stage's result settings (the dicts of
:func:`laplace_head.settings.stage_params`) and the :class:`~laplace_head.settings.Runtime`.
Every input and output path comes from the layout, so a rule's declared files and the files its
job reads and writes have one source. Heavy modules are imported inside the functions so that
the Snakefile stays cheap to parse.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from laplace_head.layout import ProjectLayout
from laplace_head.settings import (
    EvaluationSettings,
    LaplaceSettings,
    Runtime,
    segmenter_fingerprint,
)


def split_shards(layout: ProjectLayout, split: str, shard_size: int) -> list[str]:
    """The shard names of ``split``, from its manifest (as ``rules/common.smk`` derives them)."""
    from laplace_head.dataset.manifests import read_split_manifest
    from laplace_head.dataset.sharding import shard_names

    return shard_names(len(read_split_manifest(layout.manifest(split))), shard_size)


def _shard_frame(layout: ProjectLayout, split: str, shard: str, shard_size: int):
    from laplace_head.dataset.manifests import read_split_manifest
    from laplace_head.dataset.sharding import shard_rows

    return shard_rows(read_split_manifest(layout.manifest(split)), shard, shard_size)


def build_manifests(
    layout: ProjectLayout, settings: Mapping[str, Any], runtime: Runtime, workers: int = 1
) -> dict:
    """Stage 1: scan, validate and split; log the counts to wandb when enabled."""
    import pandas as pd

    from laplace_head.dataset.manifests import build_manifests as run_stage
    from laplace_head.dataset.splits import SplitFractions
    from laplace_head.util.tracking import init_tracker

    tracker = init_tracker(runtime.wandb, runtime.project_root, "build_manifests")
    report = run_stage(
        settings["images_root"],
        settings["masks_root"],
        layout,
        settings["split_seed"],
        workers,
        SplitFractions(*settings["split_fractions"]),
    )
    tracker.log(
        {
            "manifest/valid": report["n_valid"],
            "manifest/invalid": report["n_invalid"],
            **{f"manifest/{k}_size": v for k, v in report["split_sizes"].items()},
        }
    )
    tracker.log_table("manifest/per_class", pd.DataFrame(report["per_class"]))
    if report["invalid_samples"]:
        tracker.log_table("manifest/invalid_samples", pd.DataFrame(report["invalid_samples"]))
    tracker.finish()
    return report


def generate_promptsets(
    layout: ProjectLayout,
    split: str,
    shard: str,
    settings: Mapping[str, Any],
    force: bool = False,
) -> dict:
    """Stage 2 for one shard: the prompt-set JSONs, then the shard summary (written last).
    ``settings`` are :func:`laplace_head.settings.split_settings` of the split."""
    from laplace_head.prompts.promptsets import generate_promptsets_shard
    from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files

    summary = generate_promptsets_shard(
        _shard_frame(layout, split, shard, settings["shard_size"]),
        split,
        layout,
        settings["num_promptsets"],
        settings["min_pairs"],
        settings["max_pairs"],
        settings["prompt_seed"],
        force=force,
        first_click_promptsets=settings["first_click_promptsets"],
    )
    summary_path = layout.shard_summary("prompt_sets", split, shard)
    remove_stale_temp_files(summary_path.parent, [summary_path.name])
    atomic_write_json(summary_path, {"shard": shard, **summary})
    return summary


def precompute_sam(
    layout: ProjectLayout,
    splits: Sequence[str],
    shard: str | None,
    settings: Mapping[str, Any],
    runtime: Runtime,
) -> list[dict]:
    """Stage 3 for one shard (``shard`` given, one split) or for every shard of ``splits``."""
    from laplace_head.cache.precompute import run_precompute

    return run_precompute(
        layout,
        splits,
        shard,
        settings["shard_size"],
        settings["sigma"],
        {**settings["segmenter"], "device": runtime.sam_device},
        runtime.wandb,
    )


def build_training_index(layout: ProjectLayout, split: str, settings: Mapping[str, Any]) -> dict:
    """Stage 4: the training index of one split and its failure rows, from the stage-3 shard
    summaries of the split's shards."""
    from laplace_head.cache.index import write_training_index

    shards = split_shards(layout, split, settings["shard_size"])
    return write_training_index(
        split,
        layout.manifest(split),
        layout.precompute_dir(split),
        [layout.shard_summary("sam_precompute", split, shard) for shard in shards],
        layout.training_index(split),
        layout.training_failures(split),
        promptset_json=lambda safe_id: layout.promptset_json(split, safe_id),
    )


def pack_hdf5(
    layout: ProjectLayout, split: str, settings: Mapping[str, Any], runtime: Runtime
) -> dict:
    """Stage 4.5: pack one split for the layout's head, recording the segmenter fingerprint of
    ``settings`` (the segmenter and prompt sigma stage 3 used); its chunking and compression are
    storage settings of the runtime (``data.h5_chunk_rows``, ``data.h5_compression``), which
    change no value read back. A head that reads the image gets the image once per sample and
    links to the seed head's split for the rest (:func:`~laplace_head.cache.packing
    .pack_image_split`; that split must be packed first)."""
    from laplace_head.cache.packing import pack_image_split, pack_split
    from laplace_head.model.head_variant import HeadVariant

    head = HeadVariant.parse(layout.head_variant, "the layout's head")
    if head.needs_image:
        return pack_image_split(
            layout.training_index(split),
            layout.base_split_h5(split),
            layout.split_h5(split),
            head,
        )
    return pack_split(
        layout.training_index(split),
        layout.split_h5(split),
        split=split,
        chunk_rows=runtime.h5_chunk_rows,
        compression=runtime.h5_compression,
        segmenter_fingerprint=segmenter_fingerprint(
            settings["segmenter"], settings["prompt_sigma"]
        ),
    )


@contextlib.contextmanager
def _run_tracker(runtime: Runtime, job_type: str, run_id: str, run_config: dict) -> Iterator[Any]:
    """A wandb run (or a no-op tracker) for one stage of one training run, always finished."""
    from laplace_head.util.tracking import init_tracker

    tracker = init_tracker(
        runtime.wandb,
        runtime.project_root,
        job_type,
        name=f"{job_type}_{run_id}",
        run_config={**run_config, "run_id": run_id},
    )
    try:
        yield tracker
    finally:
        tracker.finish()


def train_head(
    layout: ProjectLayout,
    settings: Mapping[str, Any],
    runtime: Runtime,
    resume: str,
    force: bool = False,
) -> dict:
    """Stage 5: train (or resume) the layout's run; ``resume`` is never | auto | require."""
    from laplace_head.training.loop import TrainingSettings
    from laplace_head.training.loop import train_head as run_stage

    training_settings = TrainingSettings.from_params(settings, runtime)
    run_config = training_settings.as_config()
    run_config["training"]["run_id"] = layout.run_id
    return run_stage(
        layout.split_h5("train"),
        layout.split_h5("val"),
        layout.run_dir,
        training_settings,
        layout.run_id,
        run_config=run_config,
        resume=resume,
        force=force,
        wandb_config=runtime.wandb,
        project_root=runtime.project_root,
    )


def sanity_check_head(layout: ProjectLayout, settings: Mapping[str, Any], runtime: Runtime) -> dict:
    """``--sanity_check``: can the head overfit a tiny fixed batch? Writes its JSON."""
    from laplace_head.training.loop import TrainingSettings
    from laplace_head.training.sanity import sanity_check_to_file

    training_settings = TrainingSettings.from_params(settings, runtime)
    return sanity_check_to_file(
        layout.split_h5("train"),
        layout.sanity_check,
        channels_in=training_settings.channels_in,
        hidden_channels=training_settings.hidden_channels,
        logit_clip=training_settings.logit_clip,
        dice_lambda=training_settings.dice_lambda,
        seed=training_settings.seed,
        device=training_settings.device,
    )


def plot_training_curves(layout: ProjectLayout) -> None:
    """The loss / IoU curves of the layout's run from its ``training_summary.json``."""
    from laplace_head.training.plots import plot_training_summary

    plot_training_summary(layout.training_summary, layout.training_curves)


def fit_laplace(
    layout: ProjectLayout, settings: Mapping[str, Any], runtime: Runtime, force: bool
) -> dict:
    """Stage 6: fit, tune and save the Laplace posterior of the run's ``best.pt`` (the
    layout's posterior variant, if it has one)."""
    from laplace_head.bayes.fit import fit_laplace as run_stage

    with _run_tracker(
        runtime, "fit_laplace", layout.run_id, {"laplace": dict(settings["laplace"])}
    ) as tracker:
        return run_stage(
            layout.best_checkpoint,
            layout.split_h5("train"),
            layout.split_h5("val"),
            layout.laplace_dir,
            LaplaceSettings.from_params(settings),
            force=force,
            run_id=layout.run_id,
            tracker=tracker,
        )


def evaluate(layout: ProjectLayout, settings: Mapping[str, Any], runtime: Runtime) -> dict:
    """Stage 7: base / MAP / temperature-scaled / Laplace on the test split, with figures."""
    from laplace_head.evaluation.evaluate import evaluate as run_stage

    with _run_tracker(
        runtime, "evaluate", layout.run_id, {"evaluation": dict(settings)}
    ) as tracker:
        return run_stage(
            layout.laplace_dir,
            layout.split_h5("test"),
            layout.split_h5("val"),
            layout.eval_files(),
            EvaluationSettings.from_params(settings),
            run_id=layout.run_id,
            tracker=tracker,
        )


def active_prompting(
    layout: ProjectLayout,
    split: str,
    shard: str,
    settings: Mapping[str, Any],
    runtime: Runtime,
) -> dict:
    """Stage 8 for one shard: every configured click policy on every image, one JSONL."""
    from laplace_head.interactive.predictor import InteractivePredictor
    from laplace_head.interactive.shard import run_shard
    from laplace_head.util.atomic import file_md5

    rows = _shard_frame(layout, split, shard, settings["shard_size"])
    predictor = InteractivePredictor.from_settings(
        settings,
        layout.laplace_dir,
        device=runtime.sam_device,  # the base segmenter's device; the head goes there too
    )
    return run_shard(
        rows.to_dict("records"),
        predictor,
        layout.active_prompting_shard(split, shard),
        settings["policies"],
        settings["max_clicks"],
        settings["seed"],
        identity={
            "settings": {k: v for k, v in settings.items() if k != "n_bootstrap"},
            "posterior_md5": file_md5(layout.laplace_file("state")),
        },
    )


def active_prompting_report(
    layout: ProjectLayout, settings: Mapping[str, Any], split: str | None = None
) -> dict:
    """Stage 8 aggregate: the metrics, tables and curves of every shard of ``split`` (default:
    ``active_prompting.split``)."""
    from laplace_head.evaluation.active_prompting import write_report

    split = split or settings["split"]
    shards = split_shards(layout, split, settings["shard_size"])
    return write_report(
        [layout.active_prompting_shard(split, shard) for shard in shards],
        layout.active_prompting_report(split),
        settings["max_clicks"],
        settings["n_bootstrap"],
        settings["seed"],
    )


def ablation_report(layout: ProjectLayout, settings: Mapping[str, Any]) -> dict:
    """`snakemake ablation`: the summary over every head of ``settings["heads"]`` x posterior
    variant (choose on val), in the seed head's ablation folder."""
    from laplace_head.evaluation.ablation import write_ablation
    from laplace_head.layout import HEAD_VARIANT

    summary = layout.for_head(HEAD_VARIANT)
    variants = summary.ablation_inputs(settings["variants"], settings["splits"], settings["heads"])
    return write_ablation(variants, summary.ablation_files(), settings)


def visualize_sanity(layout: ProjectLayout, split: str, settings: Mapping[str, Any]) -> list[Path]:
    """Six-panel PNGs of ``settings["n"]`` packed rows of ``split``: from its HDF5, or from its
    stage-4 index CSV while it is not packed yet."""
    from laplace_head.evaluation.sanity_panels import write_overview, write_sanity_panels

    source = layout.split_h5(split)
    if not source.is_file():
        source = layout.training_index(split)
    panels = write_sanity_panels(
        source,
        layout.debug_panels_dir,
        n=settings["n"],
        seed=settings["seed"],
        split=split,
        listing_json=layout.panels_listing(split),
    )
    write_overview(panels, layout.panels_overview(split))
    return panels
