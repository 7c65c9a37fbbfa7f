"""One function per rule: what a workflow script and the matching stand-alone command call.

Each takes explicit paths (from the rule's ``input``/``output``, or from
:class:`~laplace_head.layout.ProjectLayout` in the CLI), the stage's result settings (the dicts
of :func:`laplace_head.settings.stage_params`) and the :class:`~laplace_head.settings.Runtime`.
Heavy modules are imported inside the functions so that the Snakefile stays cheap to parse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from laplace_head.settings import EvaluationSettings, LaplaceSettings, Runtime

PathLike = str | os.PathLike


def build_manifests(
    manifests_dir: PathLike, settings: Mapping[str, Any], runtime: Runtime, workers: int = 1
) -> dict:
    """Stage 1: scan, validate and split; log the counts to wandb when enabled."""
    import pandas as pd

    from laplace_head.dataset.manifests import build_manifests as run_stage
    from laplace_head.util.tracking import init_tracker

    tracker = init_tracker(runtime.wandb, runtime.project_root, "build_manifests")
    report = run_stage(
        settings["images_root"],
        settings["masks_root"],
        manifests_dir,
        settings["split_seed"],
        workers,
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
    split_csv: PathLike,
    split: str,
    shard: str,
    prompt_sets_root: PathLike,
    summary_path: PathLike,
    settings: Mapping[str, Any],
    force: bool = False,
) -> dict:
    """Stage 2 for one shard: the prompt-set JSONs (under ``prompt_sets_root/<split>/``), then
    the shard summary (written last). ``settings["num_promptsets"]`` is this split's count."""
    from laplace_head.dataset.manifests import read_split_manifest
    from laplace_head.dataset.sharding import shard_rows
    from laplace_head.prompts.promptsets import generate_promptsets_shard
    from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files

    frame = read_split_manifest(split_csv)
    summary = generate_promptsets_shard(
        shard_rows(frame, shard, settings["shard_size"]),
        split,
        prompt_sets_root,
        settings["num_promptsets"],
        settings["min_pairs"],
        settings["max_pairs"],
        settings["prompt_seed"],
        force=force,
        first_click_promptsets=settings["first_click_promptsets"],
    )
    summary_path = Path(summary_path)
    remove_stale_temp_files(summary_path.parent, [summary_path.name])
    atomic_write_json(summary_path, {"shard": shard, **summary})
    return summary


def precompute_sam(
    project_root: PathLike,
    splits: Sequence[str],
    shard: str | None,
    settings: Mapping[str, Any],
    runtime: Runtime,
    split_csv: PathLike | None = None,
    summary_path: PathLike | None = None,
) -> list[dict]:
    """Stage 3 for one shard (``shard`` given) or for every shard of ``splits``."""
    from laplace_head.cache.precompute import run_precompute

    return run_precompute(
        project_root,
        splits,
        shard,
        settings["shard_size"],
        settings["sigma"],
        {**settings["segmenter"], "device": runtime.sam_device},
        runtime.wandb,
        split_csv=split_csv,
        summary_path=summary_path,
    )


def build_training_index(
    split: str,
    split_csv: PathLike,
    shard_summaries: Sequence[PathLike],
    precompute_dir: PathLike,
    prompt_sets_dir: PathLike,
    index_csv: PathLike,
    failures_csv: PathLike,
) -> dict:
    """Stage 4: the training index of one split and its failure rows."""
    from laplace_head.cache.index import write_training_index

    return write_training_index(
        split,
        split_csv,
        precompute_dir,
        shard_summaries,
        index_csv,
        failures_csv,
        prompt_sets_dir=prompt_sets_dir,
    )


def pack_hdf5(
    split: str,
    index_csv: PathLike,
    out_h5: PathLike,
    chunk_rows: int | None = None,
    compression: str = "none",
) -> dict:
    """Stage 4.5: pack one split (defaults: contiguous, uncompressed; see cache.packing)."""
    from laplace_head.cache.packing import pack_split

    return pack_split(
        index_csv, out_h5, split=split, chunk_rows=chunk_rows, compression=compression
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


def _training_settings(settings: Mapping[str, Any], runtime: Runtime):
    from laplace_head.training.loop import TrainingSettings

    return TrainingSettings(
        **settings["head"],
        **settings["training"],
        num_workers=runtime.num_workers,
        device=runtime.training_device,
        in_memory=runtime.in_memory,
    )


def train_head(
    train_h5: PathLike,
    val_h5: PathLike,
    run_dir: PathLike,
    run_id: str,
    settings: Mapping[str, Any],
    runtime: Runtime,
    resume: str,
    force: bool = False,
) -> dict:
    """Stage 5: train (or resume) one run; ``resume`` is never | auto | require."""
    from laplace_head.training.loop import train_head as run_stage

    training_settings = _training_settings(settings, runtime)
    run_config = training_settings.as_config()
    run_config["training"]["run_id"] = run_id
    return run_stage(
        train_h5,
        val_h5,
        run_dir,
        training_settings,
        run_id,
        run_config=run_config,
        resume=resume,
        force=force,
        wandb_config=runtime.wandb,
        project_root=runtime.project_root,
    )


def sanity_check_head(
    train_h5: PathLike, output_json: PathLike, settings: Mapping[str, Any], runtime: Runtime
) -> dict:
    """``--sanity_check``: can the head overfit a tiny fixed batch? Writes its JSON."""
    from laplace_head.training.sanity import sanity_check_to_file

    training_settings = _training_settings(settings, runtime)
    return sanity_check_to_file(
        train_h5,
        output_json,
        channels_in=training_settings.channels_in,
        hidden_channels=training_settings.hidden_channels,
        logit_clip=training_settings.logit_clip,
        dice_lambda=training_settings.dice_lambda,
        seed=training_settings.seed,
        device=training_settings.device,
    )


def plot_training_curves(summary_json: PathLike, out_png: PathLike) -> None:
    """The loss / IoU curves of a run from its ``training_summary.json``."""
    from laplace_head.training.plots import plot_training_summary

    plot_training_summary(summary_json, out_png)


def fit_laplace(
    checkpoint: PathLike,
    train_h5: PathLike,
    val_h5: PathLike,
    out_dir: PathLike,
    run_id: str,
    settings: Mapping[str, Any],
    runtime: Runtime,
    force: bool,
) -> dict:
    """Stage 6: fit, tune and save the Laplace posterior of ``checkpoint`` (best.pt)."""
    from laplace_head.bayes.fit import fit_laplace as run_stage

    with _run_tracker(
        runtime, "fit_laplace", run_id, {"laplace": dict(settings["laplace"])}
    ) as tracker:
        return run_stage(
            checkpoint,
            train_h5,
            val_h5,
            out_dir,
            LaplaceSettings.from_params(settings),
            force=force,
            run_id=run_id,
            tracker=tracker,
        )


def evaluate(
    laplace_dir: PathLike,
    test_h5: PathLike,
    val_h5: PathLike,
    out_dir: PathLike,
    run_id: str,
    settings: Mapping[str, Any],
    runtime: Runtime,
) -> dict:
    """Stage 7: base / MAP / temperature-scaled / Laplace on the test split, with figures."""
    from laplace_head.evaluation.evaluate import evaluate as run_stage

    with _run_tracker(runtime, "evaluate", run_id, {"evaluation": dict(settings)}) as tracker:
        return run_stage(
            laplace_dir,
            test_h5,
            val_h5,
            out_dir,
            EvaluationSettings(**settings),
            run_id=run_id,
            tracker=tracker,
        )


def active_prompting(
    split_csv: PathLike,
    shard: str,
    laplace_dir: PathLike,
    out_jsonl: PathLike,
    settings: Mapping[str, Any],
    runtime: Runtime,
) -> dict:
    """Stage 8 for one shard: every configured click policy on every image, one JSONL."""
    from laplace_head.dataset.manifests import read_split_manifest
    from laplace_head.dataset.sharding import shard_rows
    from laplace_head.interactive.predictor import InteractivePredictor
    from laplace_head.interactive.shard import run_shard

    rows = shard_rows(read_split_manifest(split_csv), shard, settings["shard_size"])
    predictor = InteractivePredictor.from_settings(
        settings,
        laplace_dir,
        device=runtime.sam_device,  # the base segmenter's device; the head goes there too
    )
    return run_shard(
        rows.to_dict("records"),
        predictor,
        out_jsonl,
        settings["policies"],
        settings["max_clicks"],
        settings["seed"],
    )


def active_prompting_report(
    shard_jsonls: Sequence[PathLike], out_files: Mapping[str, PathLike], settings: Mapping[str, Any]
) -> dict:
    """Stage 8 aggregate: the metrics, tables and curves of all shards."""
    from laplace_head.evaluation.active_prompting import write_report

    return write_report(
        shard_jsonls, out_files, settings["max_clicks"], settings["n_bootstrap"], settings["seed"]
    )


def ablation_report(
    variants: Mapping[str, Mapping[str, Any]],
    out_files: Mapping[str, PathLike],
    settings: Mapping[str, Any],
) -> dict:
    """`snakemake ablation`: the summary over every posterior variant (choose on val)."""
    from laplace_head.evaluation.ablation import write_ablation

    return write_ablation(variants, out_files, settings)


def visualize_sanity(
    source: PathLike,
    split: str,
    out_dir: PathLike,
    settings: Mapping[str, Any],
    listing_json: PathLike | None = None,
    overview_png: PathLike | None = None,
) -> list[Path]:
    """Six-panel PNGs of ``settings["n"]`` packed rows (a split HDF5 or its index CSV)."""
    from laplace_head.evaluation.sanity_panels import write_overview, write_sanity_panels

    panels = write_sanity_panels(
        source,
        out_dir,
        n=settings["n"],
        seed=settings["seed"],
        split=split,
        listing_json=listing_json,
    )
    if overview_png:
        write_overview(panels, overview_png)
    return panels
