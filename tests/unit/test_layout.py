"""ProjectLayout: the log and benchmark names, the bound layouts, the per-name file maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from laplace_head.layout import (
    ABLATION_FILES,
    ACTIVE_PROMPTING_FILES,
    EVAL_FILES,
    ProjectLayout,
    shard_name,
)

ROOT = Path("/p")


@pytest.mark.parametrize(
    ("layout", "rule", "split", "shard", "expected"),
    [
        (ProjectLayout(ROOT), "build_manifests", None, None, "build_manifests/build_manifests"),
        (ProjectLayout(ROOT), "pack_hdf5", "val", None, "pack_hdf5/val"),
        (ProjectLayout(ROOT), "precompute_sam", "train", 3, "precompute_sam/train/shard_0003"),
        (ProjectLayout(ROOT), "precompute_sam", None, "7", "precompute_sam/shard_0007"),
        (ProjectLayout(ROOT, "v1"), "train_head", None, None, "train_head/run_v1"),
        (
            ProjectLayout(ROOT, "v1", posterior="all_kron"),
            "evaluate",
            None,
            None,
            "evaluate/run_v1/variant_all_kron",
        ),
        (ProjectLayout(ROOT, None, "image"), "pack_hdf5", "val", None, "pack_hdf5/image/val"),
        (ProjectLayout(ROOT, "v1", "image"), "train_head", None, None, "train_head/image/run_v1"),
        (
            ProjectLayout(ROOT, "{run_id}", "{head}"),
            "active_prompting",
            "{split}",
            "{shard}",
            "active_prompting/{head}/run_{run_id}/{split}/shard_{shard}",
        ),
        (
            ProjectLayout(ROOT, "{run_id}", posterior="{variant}"),
            "active_prompting",
            "{split}",
            "{shard}",
            "active_prompting/run_{run_id}/variant_{variant}/{split}/shard_{shard}",
        ),
    ],
)
def test_log_and_benchmark_name_the_job_by_run_variant_split_shard(
    layout, rule, split, shard, expected
) -> None:
    assert layout.log(rule, split, shard) == ROOT / "logs" / f"{expected}.log"
    assert layout.benchmark(rule, split, shard) == ROOT / "benchmarks" / f"{expected}.tsv"


def test_project_drops_the_run_and_variant() -> None:
    bound = ProjectLayout(ROOT, "v1", posterior="x")
    project = bound.project()
    assert project.log("pack_hdf5", "train") == ROOT / "logs" / "pack_hdf5" / "train.log"
    assert project.split_h5("train") == bound.split_h5("train")
    with pytest.raises(ValueError, match="run_id"):
        _ = project.run_dir


def test_shard_name_pads_numbers_and_passes_wildcards() -> None:
    assert [shard_name(7), shard_name("7"), shard_name("0007")] == ["0007"] * 3
    assert shard_name("{shard}") == "{shard}"
    assert ProjectLayout(ROOT).shard_summary("prompt_sets", "val", 12).name == "shard_0012.json"


def test_file_maps_hold_every_name() -> None:
    run = ProjectLayout(ROOT, "v1")
    assert run.eval_files() == {name: run.eval_dir / f for name, f in EVAL_FILES.items()}
    assert run.ablation_files() == {
        name: run.ablation_dir / f for name, f in ABLATION_FILES.items()
    }
    assert set(run.active_prompting_report("test")) == set(ACTIVE_PROMPTING_FILES)


def test_a_variant_reports_each_split_apart_and_the_run_its_one_split() -> None:
    run = ProjectLayout(ROOT, "v1")
    variant = run.for_posterior("last_full")
    assert run.active_prompting_report("test")["metrics"] == (
        run.active_prompting_dir / ACTIVE_PROMPTING_FILES["metrics"]
    )
    assert variant.active_prompting_report("val")["curves"] == (
        run.ablation_dir / "last_full" / "active_prompting" / "val" / "curves.png"
    )


def test_ablation_inputs_name_each_variants_three_reports() -> None:
    run = ProjectLayout(ROOT, "v1")
    inputs = run.ablation_inputs(["a", "b"], ["val", "test"])
    assert set(inputs) == {"a", "b"}
    variant = run.for_posterior("b")
    assert inputs["b"] == {
        "meta": variant.laplace_file("meta"),
        "eval": variant.eval_file("metrics"),
        "clicks": {
            split: variant.active_prompting_file("metrics", split) for split in ("val", "test")
        },
    }


def test_ablation_inputs_cover_every_head_and_name_another_heads_variants_by_it() -> None:
    run = ProjectLayout(ROOT, "v1")
    inputs = run.ablation_inputs(["a"], ["val"], ["no_image", "image"])
    assert list(inputs) == ["a", "image/a"]
    image = run.for_head("image").for_posterior("a")
    assert inputs["image/a"]["meta"] == ROOT / "laplace/image/run_v1/variants/a/posterior_meta.json"
    assert inputs["image/a"]["eval"] == image.eval_file("metrics")
    assert image.eval_file("metrics") == ROOT / "reports/ablation/image/run_v1/a/eval/metrics.json"
    assert inputs["a"] == run.ablation_inputs(["a"], ["val"])["a"]


def test_the_seed_head_keeps_the_seed_paths_and_another_head_gets_its_own_folders() -> None:
    seed = ProjectLayout(ROOT, "v1")
    image = seed.for_head("image")
    assert seed.head_variant == "no_image" and image.head_variant == "image"
    assert image.run_id == "v1" and image.for_head("no_image").eval_dir == seed.eval_dir
    # the seed's paths, byte for byte
    assert seed.split_h5("train") == ROOT / "training_data/no_image/train.h5"
    assert seed.run_dir == ROOT / "checkpoints/no_image/run_v1"
    assert seed.laplace_dir == ROOT / "laplace/no_image/run_v1"
    assert seed.eval_dir == ROOT / "reports/eval/run_v1"
    assert seed.active_prompting_dir == ROOT / "reports/active_prompting/run_v1"
    assert seed.ablation_dir == ROOT / "reports/ablation/run_v1"
    # another head: its own split, run, posterior and reports; stage 4 stays shared
    assert image.split_h5("train") == ROOT / "training_data/image/train.h5"
    assert image.base_split_h5("train") == seed.split_h5("train")
    assert image.training_index("val") == seed.training_index("val")
    assert image.training_failures("val") == seed.training_failures("val")
    assert image.run_dir == ROOT / "checkpoints/image/run_v1"
    assert image.laplace_dir == ROOT / "laplace/image/run_v1"
    assert image.eval_dir == ROOT / "reports/eval/image/run_v1"
    assert image.active_prompting_dir == ROOT / "reports/active_prompting/image/run_v1"
    assert image.ablation_dir == ROOT / "reports/ablation/image/run_v1"
    assert image.project().split_h5("val") == ROOT / "training_data/image/val.h5"
    assert image.with_run("v2").for_posterior("x").head_variant == "image"
    # the layout read back off a folder keeps its head
    assert ProjectLayout.of_laplace_dir(image.laplace_dir).eval_dir == image.eval_dir
    assert ProjectLayout.of_run_dir(image.run_dir).head_variant == "image"
    assert "head_variant='image'" in repr(image) and "head_variant" not in repr(seed)
