"""``python -m laplace_head <command>``: every stage as a stand-alone command.

Each command reads the config file(s), resolves every path through
:class:`~laplace_head.layout.ProjectLayout` and calls the same :mod:`laplace_head.stages`
function as the rule's script, logging to the rule's log file. Examples::

    python -m laplace_head build-manifests --config config/config.yaml
    python -m laplace_head train-head --config config/config.yaml --run_id v1 --resume
    python -m laplace_head train-head --config config/config.yaml --sanity_check
    python -m laplace_head fit-laplace --config config/config.yaml --force
    python -m laplace_head visualize-sanity --config config/config.yaml --n 8 --split train
    python -m laplace_head annotate --config config/config.yaml config/demo.yaml

``--config`` takes several files, later ones overriding earlier ones key by key, as Snakemake
merges ``--configfile`` (``--config config/config.yaml config/demo.yaml``).

A stage command holds the project folder's lock (:mod:`laplace_head.util.project_lock`) while it
runs, as a workflow does; ``unlock`` removes a lock whose run is over.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from laplace_head import stages
from laplace_head.layout import SPLITS, ProjectLayout, shard_name
from laplace_head.settings import Runtime, split_settings, stage_params
from laplace_head.util.console import run_user_facing, setup_logging
from laplace_head.util.project_lock import ProjectLock

DEFAULT_CONFIG = "config/config.yaml"
#: The annotator's default masks root (``annotate --out``).
ANNOTATE_OUT = "annotations/masks"
#: The project locks this process took (:class:`_Context`); :func:`main` gives them back.
_HELD: list[ProjectLock] = []


class _Context:
    """What every command needs: the config, its per-stage settings, the layouts.

    ``project`` is the layout of stages 1-4 (no run); ``layout`` is bound to the run and, with
    ``--variant``, to that posterior variant. ``overrides`` (``{section: {key: value}}``) are
    command-line flags that set config keys; they pass through the config's validation. With
    ``lock`` the project folder's lock is taken (a second run on the project is refused).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        check_paths: bool = False,
        overrides: dict[str, dict[str, Any]] | None = None,
        lock: bool = True,
    ) -> None:
        from laplace_head.config import load_configs

        overrides = {
            section: {key: value for key, value in keys.items() if value is not None}
            for section, keys in (overrides or {}).items()
        }
        self.config = run_user_facing(lambda: load_configs(args.config, check_paths, overrides))
        run_id = getattr(args, "run_id", None) or self.config["training"]["run_id"]
        self.variant = getattr(args, "variant", None)
        # stages 1-4 are shared by every head; the run (stages 5-8) is head.variant's
        self.project = ProjectLayout(self.config["data"]["project_root"])
        self.head_project = self.project.for_head(self.config["head"]["variant"])
        self.layout = self.head_project.with_run(run_id)
        if self.variant:  # an ablation variant: its own stage 6-8 folders and settings
            self.layout = self.layout.for_posterior(self.variant)
        self.params = run_user_facing(lambda: stage_params(self.config, self.variant))
        self.runtime = Runtime.from_config(self.config)
        if lock:
            project_lock = ProjectLock(self.project.lock)
            run_user_facing(project_lock.acquire)
            _HELD.append(project_lock)

    def run(self, log_file: Path, func: Callable[[], Any]) -> Any:
        setup_logging(log_file)
        return run_user_facing(func)

    def splits(self, args: argparse.Namespace) -> list[str]:
        return [args.split] if getattr(args, "split", None) else list(SPLITS)

    def shards(self, split: str, shard_size: int) -> list[str]:
        """The shard names of a split, from its manifest (as ``rules/common.smk`` derives them)."""
        return run_user_facing(lambda: stages.split_shards(self.project, split, shard_size))


def _run_id_argument(value: str) -> str:
    """``--run_id``: a run name by the schema's rule for ``training.run_id`` (a full match)."""
    from laplace_head.config import load_schema

    pattern = load_schema()["properties"]["training"]["properties"]["run_id"]["pattern"]
    if not re.fullmatch(pattern, value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a run name: it must match {pattern} as a whole, as "
            "training.run_id must"
        )
    return value


def _shard_argument(value: str) -> str:
    """``--shard``: a shard number in ASCII digits (``0007`` or ``7``), as its name ``0007``."""
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a shard number; give its digits, e.g. --shard 0000"
        )
    return shard_name(value)


def _build_manifests(args: argparse.Namespace) -> None:
    ctx = _Context(args, check_paths=True)
    project = ctx.project
    done = all(project.manifest(name).is_file() for name in ("all_samples", *SPLITS))
    if done and not args.force:
        print(
            f"manifests exist in {project.manifests_dir}; pass --force to rescan (splits stay "
            "frozen)"
        )
        return
    ctx.run(
        project.log("build_manifests"),
        lambda: stages.build_manifests(
            project, ctx.params["build_manifests"], ctx.runtime, args.workers
        ),
    )


def _generate_promptsets(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    settings = ctx.params["generate_promptsets"]
    for split in ctx.splits(args):
        for shard in ctx.shards(split, settings["shard_size"]):
            ctx.run(
                ctx.project.log("generate_promptsets", split, shard),
                lambda split=split, shard=shard: stages.generate_promptsets(
                    ctx.project, split, shard, split_settings(settings, split), force=args.force
                ),
            )


def _precompute_sam(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.project.log("precompute_sam", args.split, args.shard),
        lambda: stages.precompute_sam(
            ctx.project, ctx.splits(args), args.shard, ctx.params["precompute_sam"], ctx.runtime
        ),
    )


def _build_training_index(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    for split in ctx.splits(args):
        ctx.run(
            ctx.project.log("build_training_index", split),
            lambda split=split: stages.build_training_index(
                ctx.project, split, ctx.params["build_training_index"]
            ),
        )


def _pack_hdf5(args: argparse.Namespace) -> None:
    storage = {"h5_chunk_rows": args.chunk_rows, "h5_compression": args.compression}
    ctx = _Context(args, overrides={"data": storage})
    # the seed head's split first: another head's split links to it
    heads = dict.fromkeys([ctx.project.head_variant, ctx.head_project.head_variant])
    for head in heads:
        project = ctx.project.for_head(head)
        for split in ctx.splits(args):
            ctx.run(
                project.log("pack_hdf5", split),
                lambda split=split, project=project: stages.pack_hdf5(
                    project, split, ctx.params["pack_hdf5"], ctx.runtime
                ),
            )


def _train_head(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout, settings = ctx.layout, ctx.params["train_head"]
    if args.sanity_check:
        ctx.run(
            layout.log("sanity_check_head"),
            lambda: stages.sanity_check_head(layout, settings, ctx.runtime),
        )
        return
    ctx.run(
        layout.log("train_head"),
        lambda: stages.train_head(
            layout,
            settings,
            ctx.runtime,
            resume="require" if args.resume else "never",
            force=args.force,
        ),
    )


def _plot_training_curves(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.layout.log("plot_training_curves"),
        lambda: stages.plot_training_curves(ctx.layout),
    )


def _fit_laplace(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.layout.log("fit_laplace"),
        lambda: stages.fit_laplace(
            ctx.layout, ctx.params["fit_laplace"], ctx.runtime, force=args.force
        ),
    )


def _evaluate(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    ctx.run(
        ctx.layout.log("evaluate"),
        lambda: stages.evaluate(ctx.layout, ctx.params["evaluate"], ctx.runtime),
    )


def _active_prompting(args: argparse.Namespace) -> None:
    ctx = _Context(args)
    layout, settings = ctx.layout, ctx.params["active_prompting"]
    split = args.split or settings["split"]
    shards = [args.shard] if args.shard else ctx.shards(split, settings["shard_size"])
    for shard in shards:
        ctx.run(
            layout.log("active_prompting", split, shard),
            lambda shard=shard: stages.active_prompting(
                layout, split, shard, settings, ctx.runtime
            ),
        )
    if not args.shard:
        # the run reports its one split; a variant reports each split in its own folder
        report_split = split if ctx.variant else None
        ctx.run(
            layout.log("active_prompting_report", report_split),
            lambda: stages.active_prompting_report(layout, settings, split),
        )


def _visualize_sanity(args: argparse.Namespace) -> None:
    ctx = _Context(args, overrides={"sanity_panels": {"n": args.n, "seed": args.seed}})
    ctx.run(
        ctx.project.log("visualize_sanity", args.split),
        lambda: stages.visualize_sanity(ctx.project, args.split, ctx.params["visualize_sanity"]),
    )


def _unlock(args: argparse.Namespace) -> None:
    ctx = _Context(args, lock=False)
    lock = ProjectLock(ctx.project.lock)
    holder = run_user_facing(lambda: lock.break_lock(force=args.force))
    if holder is None:
        print(f"{lock.path} does not exist: the project is not locked")
    else:
        print(f"removed {lock.path} (it named {holder or 'nobody readable'})")


def _annotate(args: argparse.Namespace) -> None:
    from laplace_head.annotate import build_annotator
    from laplace_head.annotate.server import (
        LOOPBACK_HOSTS,
        bind,
        create_app,
        is_loopback,
        new_token,
        serve,
        server_url,
    )

    ctx = _Context(args, lock=False)  # reads the project; writes only under --out
    annotator = run_user_facing(
        lambda: build_annotator(
            ctx.config,
            ctx.layout,
            images=args.images,
            out=args.out,
            variant=ctx.variant,
            cache_size=args.cache_size,
        )
    )
    token = None if is_loopback(args.host) else new_token()
    sock = run_user_facing(lambda: bind(args.host, args.port))
    url = server_url(args.host, sock.getsockname()[1], token)
    print(
        f"annotating {len(annotator.catalog)} images of {annotator.catalog.images_root}; "
        f"masks go to {annotator.store.out}\nopen {url}  (Ctrl-C stops)",
        flush=True,
    )
    hosts = LOOPBACK_HOSTS if token is None else None
    serve(create_app(annotator, token=token, allowed_hosts=hosts), sock)


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
            sub.add_argument(
                "--run_id", type=_run_id_argument, help="run name (default: training.run_id)"
            )
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
    sub.add_argument(
        "--shard", type=_shard_argument, help="only this shard, e.g. 0000 (default: all)"
    )
    command("build-training-index", _build_training_index, "stage 4", split=True)
    sub = command("pack-hdf5", _pack_hdf5, "stage 4.5", split=True)
    sub.add_argument("--chunk-rows", type=int, help="sets data.h5_chunk_rows")
    sub.add_argument("--compression", help="sets data.h5_compression: none | lzf | gzip-N")
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
    sub.add_argument(
        "--shard", type=_shard_argument, help="only this shard, e.g. 0000 (no report then)"
    )
    sub = command("visualize-sanity", _visualize_sanity, "six-panel PNGs of packed rows")
    sub.set_defaults(split="train")
    sub.add_argument("--split", choices=SPLITS, default="train", help="split to show")
    sub.add_argument("--n", type=int, help="sets sanity_panels.n, the number of panels")
    sub.add_argument("--seed", type=int, help="sets sanity_panels.seed, the row choice")
    sub = command("unlock", _unlock, "remove the project's lock left by a run that is over")
    sub.add_argument(
        "--force", action="store_true", help="even when its process still runs on this host"
    )
    sub = command(
        "annotate",
        _annotate,
        "the annotator: a web page to segment images with the run's posterior",
        run=True,
        variant=True,
    )
    sub.add_argument("--run", dest="run_id", help="same as --run_id")
    sub.add_argument(
        "--images",
        metavar="DIR",
        help="annotate these <class>/<stem>.{jpg,jpeg,png} images (default: the project's "
        "manifests, every split)",
    )
    sub.add_argument(
        "--out",
        metavar="DIR",
        default=ANNOTATE_OUT,
        help="masks root to save into, <DIR>/<class>/<stem>.png: a new run's data.masks_root "
        f"(default: {ANNOTATE_OUT})",
    )
    sub.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (not loopback: a token is needed)"
    )
    sub.add_argument("--port", type=int, default=8765, help="port (0: a free one)")
    sub.add_argument("--cache-size", type=int, help="image embeddings kept (default: 8)")
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
    try:
        args.func(args)
    finally:
        while _HELD:
            _HELD.pop().release()
