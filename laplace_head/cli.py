"""``python -m laplace_head <command>``: every stage as a stand-alone command.

Each command reads the config file(s), resolves every path through
:class:`~laplace_head.layout.ProjectLayout` and calls the same :mod:`laplace_head.stages`
function as the rule's script, logging to the rule's log file. Examples::

    python -m laplace_head build-manifests --config config/config.yaml
    python -m laplace_head train-head --config config/config.yaml --run_id v1 --resume
    python -m laplace_head train-head --config config/config.yaml --sanity_check
    python -m laplace_head fit-laplace --config config/config.yaml --force
    python -m laplace_head visualize-sanity --config config/config.yaml --n 8 --split train

``--config`` takes several files, later ones overriding earlier ones key by key, as Snakemake
merges ``--configfile`` (``--config config/config.yaml config/demo.yaml``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from laplace_head import stages
from laplace_head.layout import ACTIVE_PROMPTING_FILES, SPLITS, ProjectLayout
from laplace_head.settings import Runtime, stage_params
from laplace_head.util.console import run_user_facing, setup_logging

DEFAULT_CONFIG = "config/config.yaml"


class _Context:
    """What every command needs: the config, its per-stage settings, the layout."""

    def __init__(self, args: argparse.Namespace, check_paths: bool = False) -> None:
        from laplace_head.config import load_configs

        self.config = run_user_facing(lambda: load_configs(args.config, check_paths))
        run_id = getattr(args, "run_id", None) or self.config["training"]["run_id"]
        self.run_id = run_id
        self.variant = getattr(args, "variant", None)
        self.layout = ProjectLayout(self.config["data"]["project_root"], run_id=run_id)
        if self.variant:  # an ablation variant: its own stage 6-8 folders and settings
            self.layout = self.layout.for_posterior(self.variant)
        self.params = run_user_facing(lambda: stage_params(self.config, self.variant))
        self.runtime = Runtime.from_config(self.config)

    def log_parts(self, *parts: str) -> tuple[str, ...]:
        """``run_<id>[, variant_<name>], *parts`` as the rules name their logs."""
        variant = (f"variant_{self.variant}",) if self.variant else ()
        return (f"run_{self.run_id}", *variant, *parts)

    def run(self, log_file: Path, func: Callable[[], Any]) -> Any:
        setup_logging(log_file)
        return run_user_facing(func)

    def splits(self, args: argparse.Namespace) -> list[str]:
        return [args.split] if getattr(args, "split", None) else list(SPLITS)

    def shards(self, split: str, shard_size: int) -> list[str]:
        """The shard names of a split, from its manifest (as ``rules/common.smk`` derives them)."""
        from laplace_head.dataset.manifests import read_split_manifest
        from laplace_head.dataset.sharding import shard_names

        frame = run_user_facing(lambda: read_split_manifest(self.layout.manifest(split)))
        return shard_names(len(frame), shard_size)


def _build_manifests(args: argparse.Namespace) -> None:
    ctx = _Context(args, check_paths=True)
    layout = ctx.layout
    done = all(layout.manifest(name).is_file() for name in ("all_samples", *SPLITS))
    if done and not args.force:
        print(
            f"manifests exist in {layout.manifests_dir}; pass --force to rescan (splits stay "
            "frozen)"
        )
        return
    ctx.run(
        layout.log("build_manifests"),
        lambda: stages.build_manifests(
            layout.manifests_dir, ctx.params["build_manifests"], ctx.runtime, args.workers
        ),
    )


def _generate_promptsets(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    settings = ctx.params["generate_promptsets"]
    for split in ctx.splits(args):
        for shard in ctx.shards(split, settings["shard_size"]):
            ctx.run(
                ctx.layout.log("generate_promptsets", split, f"shard_{shard}"),
                lambda split=split, shard=shard: stages.generate_promptsets(
                    ctx.layout.manifest(split),
                    split,
                    shard,
                    ctx.layout.prompt_sets_dir(split).parent,
                    ctx.layout.shard_summary("prompt_sets", split, shard),
                    {**settings, "num_promptsets": settings["num_promptsets"][split]},
                    force=args.force,
                ),
            )


def _precompute_sam(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.layout.log("precompute_sam", "standalone"),
        lambda: stages.precompute_sam(
            ctx.layout.root, ctx.splits(args), args.shard, ctx.params["precompute_sam"], ctx.runtime
        ),
    )


def _build_training_index(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout = ctx.layout
    for split in ctx.splits(args):
        summaries = sorted(layout.shard_summary("sam_precompute", split, 0).parent.glob("*.json"))
        ctx.run(
            layout.log("build_training_index", split),
            lambda split=split, summaries=summaries: stages.build_training_index(
                split,
                layout.manifest(split),
                summaries,
                layout.precompute_dir(split),
                layout.prompt_sets_dir(split),
                layout.training_index(split),
                layout.training_failures(split),
            ),
        )


def _pack_hdf5(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    for split in ctx.splits(args):
        ctx.run(
            ctx.layout.log("pack_hdf5", split),
            lambda split=split: stages.pack_hdf5(
                split,
                ctx.layout.training_index(split),
                ctx.layout.split_h5(split),
                args.chunk_rows,
                args.compression,
            ),
        )


def _train_head(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout, settings = ctx.layout, ctx.params["train_head"]
    if args.sanity_check:
        ctx.run(
            layout.log("sanity_check_head", f"run_{ctx.run_id}"),
            lambda: stages.sanity_check_head(
                layout.split_h5("train"), layout.sanity_check, settings, ctx.runtime
            ),
        )
        return
    ctx.run(
        layout.log("train_head", f"run_{ctx.run_id}"),
        lambda: stages.train_head(
            layout.split_h5("train"),
            layout.split_h5("val"),
            layout.run_dir,
            ctx.run_id,
            settings,
            ctx.runtime,
            resume="require" if args.resume else "never",
            force=args.force,
        ),
    )


def _plot_training_curves(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.layout.log("plot_training_curves", f"run_{ctx.run_id}"),
        lambda: stages.plot_training_curves(
            ctx.layout.training_summary, ctx.layout.training_curves
        ),
    )


def _fit_laplace(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout = ctx.layout
    ctx.run(
        layout.log("fit_laplace", *ctx.log_parts()),
        lambda: stages.fit_laplace(
            layout.best_checkpoint,
            layout.split_h5("train"),
            layout.split_h5("val"),
            layout.laplace_dir,
            ctx.run_id,
            ctx.params["fit_laplace"],
            ctx.runtime,
            force=args.force,
        ),
    )


def _evaluate(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout = ctx.layout
    ctx.run(
        layout.log("evaluate", *ctx.log_parts()),
        lambda: stages.evaluate(
            layout.laplace_dir,
            layout.split_h5("test"),
            layout.split_h5("val"),
            layout.eval_dir,
            ctx.run_id,
            ctx.params["evaluate"],
            ctx.runtime,
        ),
    )


def _active_prompting(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout, settings = ctx.layout, ctx.params["active_prompting"]
    split = args.split or settings["split"]
    shards = [args.shard] if args.shard else ctx.shards(split, settings["shard_size"])
    for shard in shards:
        ctx.run(
            layout.log("active_prompting", *ctx.log_parts(split, f"shard_{shard}")),
            lambda shard=shard: stages.active_prompting(
                layout.manifest(split),
                shard,
                layout.laplace_dir,
                layout.active_prompting_shard(split, shard),
                settings,
                ctx.runtime,
            ),
        )
    if not args.shard:
        report_split = split if ctx.variant else None  # a variant reports every split apart
        ctx.run(
            layout.log("active_prompting_report", *ctx.log_parts(*filter(None, [report_split]))),
            lambda: stages.active_prompting_report(
                [layout.active_prompting_shard(split, shard) for shard in shards],
                {
                    name: layout.active_prompting_file(name, report_split)
                    for name in ACTIVE_PROMPTING_FILES
                },
                settings,
            ),
        )


def _visualize_sanity(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    source = ctx.layout.split_h5(args.split)
    if not source.is_file():  # not packed yet: the stage-4 index CSV works too
        source = ctx.layout.training_index(args.split)
    ctx.run(
        ctx.layout.log("visualize_sanity", args.split),
        lambda: stages.visualize_sanity(
            source, args.split, ctx.layout.debug_panels_dir, {"n": args.n, "seed": args.seed}
        ),
    )


def _demo_data(args: argparse.Namespace) -> None:
    from laplace_head.dataset.demo import write_demo_dataset

    images, masks = write_demo_dataset(args.out, per_class=args.per_class)
    print(f"demo dataset written: {images} and {masks}")


def _config_reference(args: argparse.Namespace) -> None:
    from laplace_head.config import schema_markdown, update_readme

    if args.update_readme:
        changed = update_readme(args.update_readme)
        print(f"{args.update_readme} config reference " + ("updated" if changed else "current"))
    else:
        print(schema_markdown(), end="")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m laplace_head", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable, help_text: str, run: bool = False, split=False, variant=False
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            nargs="+",
            default=[DEFAULT_CONFIG],
            metavar="FILE",
            help=f"config YAML file(s), later ones override (default: {DEFAULT_CONFIG})",
        )
        if run:
            sub.add_argument("--run_id", help="run name (default: training.run_id)")
        if variant:
            sub.add_argument(
                "--variant", help="an ablation.variants name: that posterior's own folders"
            )
        if split:
            sub.add_argument("--split", choices=SPLITS, help="only this split (default: all)")
        sub.set_defaults(func=func)
        return sub

    sub = command("build-manifests", _build_manifests, "stage 1: scan, validate, split")
    sub.add_argument("--force", action="store_true", help="rescan (the splits stay frozen)")
    sub.add_argument("--workers", type=int, default=1, help="validation processes")
    sub = command("generate-promptsets", _generate_promptsets, "stage 2", split=True)
    sub.add_argument("--force", action="store_true", help="regenerate existing JSONs")
    sub = command("precompute-sam", _precompute_sam, "stage 3 (segmenter loaded once)", split=True)
    sub.add_argument("--shard", help="only this shard, e.g. 0000 (default: all)")
    command("build-training-index", _build_training_index, "stage 4", split=True)
    sub = command("pack-hdf5", _pack_hdf5, "stage 4.5", split=True)
    sub.add_argument("--chunk-rows", type=int, default=None, help="default: contiguous")
    sub.add_argument("--compression", default="none", help="none | lzf | gzip-N")
    sub = command("train-head", _train_head, "stage 5 (or --sanity_check)", run=True)
    sub.add_argument("--resume", action="store_true", help="continue the run's last epoch")
    sub.add_argument("--force", action="store_true", help="start over / accept a new config")
    sub.add_argument("--sanity_check", action="store_true", help="overfit a tiny batch only")
    command("plot-training-curves", _plot_training_curves, "training curves PNG", run=True)
    sub = command("fit-laplace", _fit_laplace, "stage 6", run=True, variant=True)
    sub.add_argument("--force", action="store_true", help="refit even if artifacts exist")
    command("evaluate", _evaluate, "stage 7", run=True, variant=True)
    sub = command(
        "active-prompting",
        _active_prompting,
        "stage 8 (every shard, then the report)",
        run=True,
        variant=True,
    )
    sub.add_argument("--split", choices=("test", "val"), help="default: active_prompting.split")
    sub.add_argument("--shard", help="only this shard, e.g. 0000 (no report then)")
    sub = command("visualize-sanity", _visualize_sanity, "six-panel PNGs of packed rows")
    sub.set_defaults(split="train")
    sub.add_argument("--split", choices=SPLITS, default="train", help="split to show")
    sub.add_argument("--n", type=int, default=8, help="number of panels")
    sub.add_argument("--seed", type=int, default=0, help="seed of the row choice")
    sub = commands.add_parser("demo-data", help="write the synthetic demo dataset")
    sub.add_argument("--out", default="demo_data", help="output folder")
    sub.add_argument("--per-class", type=int, default=20, help="samples per class")
    sub.set_defaults(func=_demo_data)
    sub = commands.add_parser("config-reference", help="the config keys as a Markdown table")
    sub.add_argument("--update-readme", metavar="README", help="rewrite its reference section")
    sub.set_defaults(func=_config_reference)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m laplace_head``."""
    setup_logging()
    args = _parser().parse_args(argv)
    args.func(args)
