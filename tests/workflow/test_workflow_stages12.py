"""Snakemake stages 1-2 (build_manifests, generate_promptsets) end to end, in a subprocess.

Every run uses ``--workflow-profile none`` so that the local profile cannot change what these
tests see, and writes under a temporary ``project_root``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laplace_head.dataset.images import load_mask, resize_mask_nearest
from laplace_head.dataset.sharding import shard_names
from laplace_head.dataset.splits import SPLITS, target_sizes

pytestmark = pytest.mark.workflow

SNAKEMAKE = ["--workflow-profile", "none", "--cores", "2"]
NUM_PROMPTSETS = {"train": 3, "val": 2, "test": 2}
SHARD_SIZE = 8  # the temporary dataset's train split (15 samples) spans two shards
ODD_STEM = "ü $x;`y` 'q'"


def _snakemake_args(targets: list[str], config: Path, *extra: str) -> list[str]:
    # Targets come before --configfile, which takes several values.
    return [*targets, *SNAKEMAKE, "--configfile", "config/demo.yaml", str(config), *extra]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _json_state(project: Path) -> dict[Path, tuple[bytes, int]]:
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(project.glob("prompt_sets/*/*.json"))
    }


def _check_stage12_outputs(project: Path, num_promptsets: dict, shard_size: int) -> dict:
    """Assert the invariants of complete stage 1-2 outputs; return per-class split counts."""
    manifests = project / "manifests"
    all_samples = _read(manifests / "all_samples.csv")
    valid = all_samples[all_samples["valid"] == "True"]
    assert (all_samples[all_samples["valid"] == "False"]["reason"] != "").all()
    assert (valid["reason"] == "").all()
    counts: dict = {}
    seen: list[str] = []
    for split in SPLITS:
        frame = _read(manifests / f"{split}.csv")
        assert list(frame["sample_id"]) == sorted(frame["sample_id"])
        assert (frame["split"] == split).all()
        seen += list(frame["sample_id"])
        for class_name, n in frame["class"].value_counts().items():
            counts.setdefault(class_name, {s: 0 for s in SPLITS})[split] = int(n)
        folder = project / "prompt_sets" / split
        jsons = {p.name for p in folder.glob("*.json")}
        assert jsons == {f"{safe_id}.json" for safe_id in frame["safe_id"]}, split
        for _, row in frame.iterrows():
            record = json.loads((folder / f"{row['safe_id']}.json").read_text(encoding="utf-8"))
            assert record["sample_id"] == row["sample_id"] and record["split"] == split
            assert len(record["promptsets"]) == num_promptsets[split]
            height, width = int(row["image_h"]), int(row["image_w"])
            mask = resize_mask_nearest(load_mask(row["mask_path"]), height, width)
            for promptset in record["promptsets"]:
                assert all(mask[y, x] for x, y in promptset["pos_points"])
                assert not any(mask[y, x] for x, y in promptset["neg_points"])
        summaries = sorted(p.name for p in (folder / "_shards").glob("*.json"))
        assert summaries == [f"shard_{s}.json" for s in shard_names(len(frame), shard_size)]
        for name in summaries:
            summary = json.loads((folder / "_shards" / name).read_text())
            assert summary["failed"] == 0 and summary["failures"] == []
    # Every valid sample is in exactly one split.
    assert sorted(seen) == sorted(valid["sample_id"])
    for class_name, split_counts in counts.items():
        n = sum(split_counts.values())
        assert split_counts == target_sizes(n), class_name
    assert not [p for p in project.rglob(".tmp-*")]
    return counts


# --- a temporary dataset with broken pairs and odd names --------------------------------------


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, repo_root: Path, data_tools, snakemake_runner, config_writer):
    root = tmp_path_factory.mktemp("stages12")
    images_root, masks_root = data_tools.make_dataset(root / "data", {"alpha": 12, "beta": 5})
    data_tools.write_pair(images_root, masks_root, "alpha", ODD_STEM, seed=77)
    data_tools.write_pair(images_root, masks_root, "gamma ü", "only", seed=78)
    (images_root / "beta" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    np.save(masks_root / "beta" / "corrupt.npy", data_tools.synthetic_mask(24, 32, 1))
    data_tools.save_image(images_root / "beta" / "no_mask.png", data_tools.synthetic_image(8, 8, 1))
    np.save(masks_root / "alpha" / "no_image.npy", data_tools.synthetic_mask(24, 32, 2))
    project = root / "project"
    config = config_writer(
        root / "override.yaml",
        images_root,
        masks_root,
        project,
        data={"shard_size": SHARD_SIZE, "split_seed": 5},
        prompt_generation={f"num_promptsets_{s}": n for s, n in NUM_PROMPTSETS.items()}
        | {"min_pairs": 1, "max_pairs": 4},
    )
    snakemake_runner(_snakemake_args(["prompt_sets"], config), cwd=repo_root)
    return {"project": project, "config": config, "root": root}


def test_stage12_outputs_on_a_temporary_dataset(tiny_project: dict) -> None:
    project = tiny_project["project"]
    counts = _check_stage12_outputs(project, NUM_PROMPTSETS, shard_size=SHARD_SIZE)
    assert counts["alpha"] == target_sizes(13) == {"train": 11, "val": 1, "test": 1}
    assert counts["beta"] == target_sizes(5) == {"train": 3, "val": 1, "test": 1}
    assert counts["gamma ü"] == {"train": 1, "val": 0, "test": 0}
    reasons = _read(project / "manifests" / "all_samples.csv").set_index("sample_id")["reason"]
    assert reasons["beta/corrupt"].startswith("image fails to decode")
    assert reasons["beta/no_mask"] == "mask missing"
    assert reasons["alpha/no_image"] == "mask without image"
    assert reasons[f"alpha/{ODD_STEM}"] == ""
    log = (project / "logs" / "build_manifests" / "build_manifests.log").read_text()
    assert "invalid samples" in log and "per class" in log
    shard_log = project / "logs" / "generate_promptsets" / "train" / "shard_0000.log"
    assert "generated 8, skipped 0, failed 0" in shard_log.read_text()
    assert len(list((project / "prompt_sets" / "train" / "_shards").glob("*.json"))) == 2


def test_rerun_has_nothing_to_do(tiny_project: dict, repo_root: Path, snakemake_runner) -> None:
    before = _json_state(tiny_project["project"])
    process = snakemake_runner(
        _snakemake_args(["prompt_sets"], tiny_project["config"]), cwd=repo_root
    )
    assert "Nothing to be done" in process.stdout + process.stderr
    assert _json_state(tiny_project["project"]) == before


@pytest.mark.parametrize(
    "recipe",
    [
        ["prompt_sets", "--forcerun", "generate_promptsets"],
        ["--forcerun", "generate_promptsets", "--until", "generate_promptsets"],
    ],
    ids=["target-prompt_sets", "until-generate_promptsets"],
)
def test_deleted_json_is_recreated_and_nothing_else_touched(
    tiny_project: dict, repo_root: Path, snakemake_runner, recipe: list[str]
) -> None:
    project = tiny_project["project"]
    before = _json_state(project)
    (victim,) = project.glob(f"prompt_sets/*/alpha__{ODD_STEM}.json")  # the odd name
    assert victim in before
    victim.unlink()
    targets = [arg for arg in recipe[:1] if not arg.startswith("-")]
    flags = recipe[len(targets) :]
    args = _snakemake_args(targets, tiny_project["config"], *flags)
    snakemake_runner(args, cwd=repo_root)
    after = _json_state(project)
    assert set(after) == set(before)
    assert after[victim][0] == before[victim][0]  # identical bytes
    for path, (data, mtime_ns) in before.items():
        if path != victim:
            assert after[path] == (data, mtime_ns), path  # untouched
    summaries = [json.loads(p.read_text()) for p in project.glob("prompt_sets/*/_shards/*.json")]
    assert sum(s["generated"] for s in summaries) == 1
    assert not (project / "sam_precompute").exists()  # later stages did not start


def test_forcerun_build_manifests_keeps_splits_frozen(
    tmp_path: Path, repo_root: Path, data_tools, snakemake_runner, config_writer
) -> None:
    images_root, masks_root = data_tools.make_dataset(tmp_path / "data", {"a": 10, "b": 3})
    project = tmp_path / "project"

    def config(seed: int) -> Path:
        return config_writer(
            tmp_path / f"seed{seed}.yaml",
            images_root,
            masks_root,
            project,
            data={"shard_size": 16, "split_seed": seed},
            prompt_generation={f"num_promptsets_{s}": 1 for s in SPLITS},
        )

    snakemake_runner(_snakemake_args(["prompt_sets"], config(1)), cwd=repo_root)
    first = _read(project / "manifests" / "all_samples.csv").set_index("sample_id")["split"]
    jsons_before = _json_state(project)

    data_tools.write_pair(images_root, masks_root, "a", "a_new", seed=999)
    np.save(masks_root / "b" / "b_000.npy", np.zeros((24, 32), np.uint8))  # now invalid
    args = _snakemake_args(["prompt_sets"], config(2), "--forcerun", "build_manifests")
    snakemake_runner(args, cwd=repo_root)

    second = _read(project / "manifests" / "all_samples.csv").set_index("sample_id")["split"]
    kept = [sid for sid in first.index if sid != "b/b_000"]
    assert (second[kept] == first[kept]).all()  # another split_seed, same splits
    assert second["b/b_000"] == "" and second["a/a_new"] in SPLITS
    report = json.loads((project / "manifests" / "manifest_report.json").read_text())
    assert report["dropped_since_previous_run"] == ["b/b_000"]
    assert report["newly_assigned"] == 1
    log = (project / "logs" / "build_manifests" / "build_manifests.log").read_text()
    assert "dropped 1 previously assigned samples" in log
    after = _json_state(project)
    new_json = project / "prompt_sets" / second["a/a_new"] / "a__a_new.json"
    assert new_json in after
    for path, state in jsons_before.items():
        assert after[path] == state, path  # finished prompt sets were not redone


def test_bad_config_stops_before_any_job(
    tmp_path: Path, repo_root: Path, snakemake_runner, config_writer
) -> None:
    project = tmp_path / "project"
    cases = {
        "missing.yaml": (
            config_writer(tmp_path / "missing.yaml", tmp_path / "nope", tmp_path, project),
            "data.images_root",
        ),
        "typo.yaml": (
            config_writer(
                tmp_path / "typo.yaml", tmp_path, tmp_path, project, data={"shard_sise": 3}
            ),
            "data.shard_sise",
        ),
    }
    for name, (config, key) in cases.items():
        process = snakemake_runner(_snakemake_args(["prompt_sets"], config), check=False)
        assert process.returncode != 0, name
        assert "Configuration error:" in process.stderr and str(config) in process.stderr
        assert key in process.stderr, process.stderr
        assert "Traceback" not in process.stderr, process.stderr
    assert not project.exists()


# --- real data -----------------------------------------------------------------------------


def test_stage12_on_real_dev(
    tmp_path: Path, repo_root: Path, real_dev_root: Path, snakemake_runner, config_writer
) -> None:
    project = tmp_path / "project"
    config = config_writer(
        tmp_path / "real_dev.yaml",
        real_dev_root / "images_root",
        real_dev_root / "masks_root",
        project,
        data={"shard_size": 64},
    )
    snakemake_runner(_snakemake_args(["prompt_sets"], config), cwd=repo_root)
    all_samples = _read(project / "manifests" / "all_samples.csv")
    assert len(all_samples) == 92
    assert (all_samples["valid"] == "True").all(), all_samples[all_samples["reason"] != ""]
    demo_counts = {"train": 6, "val": 4, "test": 4}  # num_promptsets_* of config/demo.yaml
    counts = _check_stage12_outputs(project, demo_counts, shard_size=64)
    assert counts == {
        "grabcut": {"train": 10, "val": 1, "test": 1},
        "horse": {"train": 32, "val": 4, "test": 4},
        "pet": {"train": 32, "val": 4, "test": 4},
    }


# --- scale: the DAG of a 10,000-sample manifest -------------------------------------------


def test_dry_run_over_10000_samples_plans_one_job_per_shard(
    tmp_path: Path, repo_root: Path, snakemake_runner, config_writer
) -> None:
    """Stage 1 is made complete by writing its manifests directly (fake image paths)."""
    split_sizes = {"train": 8000, "val": 1000, "test": 1000}
    shard_size = 64
    rows = []
    for split, size in split_sizes.items():
        for index in range(size):
            class_name = f"c{index % 7}"
            stem = f"{split}_{index:05d}"
            rows.append(
                {
                    "sample_id": f"{class_name}/{stem}",
                    "safe_id": f"{class_name}__{stem}",
                    "class": class_name,
                    "stem": stem,
                    "image_path": f"/nonexistent/{class_name}/{stem}.jpg",
                    "mask_path": f"/nonexistent/{class_name}/{stem}.npy",
                    "image_h": 480,
                    "image_w": 640,
                    "mask_h": 480,
                    "mask_w": 640,
                    "size_mismatch": False,
                    "valid": True,
                    "reason": "",
                    "split": split,
                }
            )
    frame = pd.DataFrame(rows).sort_values("sample_id")
    manifests = tmp_path / "project" / "manifests"
    manifests.mkdir(parents=True)
    frame.to_csv(manifests / "all_samples.csv", index=False)
    for split in SPLITS:
        frame[frame["split"] == split].to_csv(manifests / f"{split}.csv", index=False)
    (manifests / "manifest_report.json").write_text("{}\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    config = config_writer(
        tmp_path / "big.yaml",
        tmp_path / "images",
        tmp_path / "masks",
        tmp_path / "project",
        data={"shard_size": shard_size},
    )
    start = time.perf_counter()
    process = snakemake_runner(_snakemake_args(["prompt_sets"], config, "-n"), cwd=repo_root)
    elapsed = time.perf_counter() - start
    expected = sum(len(shard_names(n, shard_size)) for n in split_sizes.values())
    assert expected == 125 + 16 + 16
    match = re.search(r"^generate_promptsets\s+(\d+)\s*$", process.stdout, re.MULTILINE)
    assert match, process.stdout[-3000:]
    assert int(match.group(1)) == expected
    assert not re.search(r"^build_manifests\s+\d+", process.stdout, re.MULTILINE)
    print(f"dry run over 10,000 samples ({expected} shard jobs): {elapsed:.1f} s wall")
