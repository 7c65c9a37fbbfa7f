"""Every job a dry run plans writes exactly the outputs, log and benchmark that ProjectLayout names.

The manifests are built first (stage 1 is the checkpoint that decides the shards), then
``snakemake -n`` plans every other job of ``all``, ``ablation`` and ``sanity_check``: both
splits' shards of stages 2, 3 and 8, and every ablation variant. Each planned job is checked
against the layout methods for its rule and wildcards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from laplace_head.layout import ACTIVE_PROMPTING_FILES, EVAL_FILES, SPLITS, ProjectLayout

pytestmark = pytest.mark.workflow

LAPLACE_FILES = ("state", "config", "meta", "grid_figure")
TARGETS = ["all", "ablation", "sanity_check"]


def _expected(rule: str, wildcards: dict[str, str], root: Path) -> dict[str, list[Path]]:
    """What the layout says the job of ``rule`` with ``wildcards`` writes and logs."""
    project = ProjectLayout(root)
    split, shard = wildcards.get("split"), wildcards.get("shard")
    layout = project.with_run(wildcards["run_id"]) if "run_id" in wildcards else project
    if "variant" in wildcards:
        layout = layout.for_posterior(wildcards["variant"])
    base = rule.removesuffix("_variant")
    outputs = {
        "build_manifests": lambda: [
            *(project.manifest(name) for name in ("all_samples", *SPLITS)),
            project.manifest_report,
        ],
        "generate_promptsets": lambda: [project.shard_summary("prompt_sets", split, shard)],
        "precompute_sam": lambda: [project.shard_summary("sam_precompute", split, shard)],
        "build_training_index": lambda: [
            project.training_index(split),
            project.training_failures(split),
        ],
        "pack_hdf5": lambda: [project.split_h5(split)],
        "visualize_sanity": lambda: [
            project.panels_listing(split),
            project.panels_overview(split),
        ],
        "train_head": lambda: [layout.training_summary],
        "sanity_check_head": lambda: [layout.sanity_check],
        "plot_training_curves": lambda: [layout.training_curves],
        "fit_laplace": lambda: [layout.laplace_file(name) for name in LAPLACE_FILES],
        "evaluate": lambda: [layout.eval_file(name) for name in EVAL_FILES],
        "active_prompting": lambda: [layout.active_prompting_shard(split, shard)],
        "active_prompting_report": lambda: [
            layout.active_prompting_report(split or "test")[name] for name in ACTIVE_PROMPTING_FILES
        ],
        "ablation_report": lambda: list(layout.ablation_files().values()),
    }[base]()
    benchmarked = {
        "build_manifests",
        "precompute_sam",
        "pack_hdf5",
        "train_head",
        "fit_laplace",
        "evaluate",
        "active_prompting",
    }
    return {
        "output": outputs,
        "log": [layout.log(base, split, shard)],
        "benchmark": [layout.benchmark(base, split, shard)] if base in benchmarked else [],
    }


def _planned_jobs(text: str) -> list[tuple[str, dict[str, str], dict[str, list[Path]]]]:
    """(rule, wildcards, {output, log, benchmark}) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=(?:rule|checkpoint|localrule) \w+:\n)", text):
        head = re.match(r"(?:rule|checkpoint|localrule) (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.MULTILINE))
        wildcards = dict(
            item.split("=", 1) for item in fields.get("wildcards", "").split(", ") if item
        )
        files = {
            key: [Path(p) for p in fields[key].split(", ")] if key in fields else []
            for key in ("output", "log", "benchmark")
        }
        jobs.append((head.group(1), wildcards, files))
    return jobs


def test_dry_run_outputs_logs_and_benchmarks_are_the_layouts(
    tmp_path: Path, dataset_factory, config_writer, snakemake_runner
) -> None:
    images_root, masks_root = dataset_factory({"a": 6, "b": 6})
    project = tmp_path / "project"
    config = config_writer(
        tmp_path / "config.yaml",
        images_root,
        masks_root,
        project,
        data={"shard_size": 4},
        sam={"backend": "random_walker"},
    )
    args = ["--workflow-profile", "none", "--cores", "1", "--configfile", "config/demo.yaml"]
    snakemake_runner(["build_manifests", *args, str(config)])
    dry = snakemake_runner([*TARGETS, "-n", *args, str(config)])

    jobs = _planned_jobs(dry.stdout)
    rules = {rule for rule, _, _ in jobs}
    assert rules >= {
        "generate_promptsets",
        "precompute_sam",
        "build_training_index",
        "pack_hdf5",
        "train_head",
        "sanity_check_head",
        "plot_training_curves",
        "visualize_sanity",
        "fit_laplace",
        "fit_laplace_variant",
        "evaluate",
        "evaluate_variant",
        "active_prompting",
        "active_prompting_variant",
        "active_prompting_report",
        "active_prompting_report_variant",
        "ablation_report",
    }, rules
    shards = {wc["shard"] for rule, wc, _ in jobs if rule == "precompute_sam"}
    assert shards == {"0000", "0001"}  # the train split (8 samples) spans two shards of 4
    checked = 0
    for rule, wildcards, files in jobs:
        if rule in TARGETS:
            continue
        assert files == _expected(rule, wildcards, project), (rule, wildcards)
        checked += 1
    assert checked == len(jobs) - len(TARGETS)
