"""laplace_head.prompts.promptsets (stage 2): per-sample JSONs, skipping, forcing, shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laplace_head.dataset.images import load_mask, resize_mask_nearest
from laplace_head.dataset.manifests import build_manifests
from laplace_head.dataset.sharding import num_shards, shard_names, shard_rows
from laplace_head.layout import ProjectLayout
from laplace_head.prompts.promptsets import generate_promptsets_shard

SETTINGS = {"num_promptsets": 3, "min_pairs": 1, "max_pairs": 4, "prompt_seed": 77}
RECORD_KEYS = {
    "sample_id",
    "safe_id",
    "class",
    "split",
    "image_path",
    "mask_path",
    "image_h",
    "image_w",
    "mask_resized",
    "prompt_seed",
    "min_pairs",
    "max_pairs",
    "promptsets",
}


@pytest.fixture
def manifest(tmp_path: Path, dataset_factory, data_tools) -> pd.DataFrame:
    """Train-split manifest rows of a tiny dataset, incl. a half-size mask and odd names."""
    images_root, masks_root = dataset_factory({"a": 7, "b": 4})
    data_tools.write_pair(images_root, masks_root, "a", "ü $x;`y` 'q'", seed=5)
    image = data_tools.synthetic_image(40, 60, 9)
    data_tools.save_image(images_root / "b" / "half.png", image)
    data_tools.save_mask(masks_root / "b" / "half.npy", data_tools.synthetic_mask(20, 30, 3))
    build_manifests(images_root, masks_root, ProjectLayout(tmp_path), split_seed=0)
    frame = pd.read_csv(tmp_path / "manifests" / "all_samples.csv", keep_default_na=False)
    assert frame["valid"].all()
    return frame.sort_values("sample_id").reset_index(drop=True)


def _generate(frame: pd.DataFrame, out: Path, **overrides) -> dict:
    settings = {**SETTINGS, **overrides}
    return generate_promptsets_shard(frame, "train", ProjectLayout(out), **settings)


def _jsons(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(ProjectLayout(out).prompt_sets_dir("train").glob("*.json"))
    }


def test_one_json_per_sample_with_the_documented_fields(tmp_path: Path, manifest) -> None:
    out = tmp_path / "prompt_sets"
    summary = _generate(manifest, out)
    assert summary == {
        "split": "train",
        "generated": len(manifest),
        "skipped": 0,
        "failed": 0,
        "failures": [],
    }
    assert set(_jsons(out)) == {f"{s}.json" for s in manifest["safe_id"]}
    for _, row in manifest.iterrows():
        path = ProjectLayout(out).promptset_json("train", row["safe_id"])
        record = json.loads(path.read_text(encoding="utf-8"))
        assert set(record) == RECORD_KEYS
        assert record["sample_id"] == row["sample_id"] and record["class"] == row["class"]
        assert (record["image_h"], record["image_w"]) == (row["image_h"], row["image_w"])
        assert record["mask_resized"] == (row["sample_id"] == "b/half")
        mask = resize_mask_nearest(load_mask(row["mask_path"]), row["image_h"], row["image_w"])
        assert [p["promptset_id"] for p in record["promptsets"]] == [0, 1, 2]
        for promptset in record["promptsets"]:
            assert 1 <= promptset["k"] <= 4
            assert len(promptset["pos_points"]) == len(promptset["neg_points"]) == promptset["k"]
            assert all(mask[y, x] for x, y in promptset["pos_points"])
            assert not any(mask[y, x] for x, y in promptset["neg_points"])


def test_bytes_do_not_depend_on_order_or_shard_size(tmp_path: Path, manifest) -> None:
    reference = tmp_path / "all_at_once"
    _generate(manifest, reference)
    expected = _jsons(reference)
    for shard_size in (1, 3, 5):
        out = tmp_path / f"shards_{shard_size}"
        # Shards processed last-to-first, rows within a shard reversed.
        for shard in reversed(shard_names(len(manifest), shard_size)):
            rows = shard_rows(manifest.sample(frac=1.0, random_state=1), shard, shard_size)
            _generate(rows.iloc[::-1], out)
        assert _jsons(out) == expected, shard_size


def test_sharding_assignment_is_stable_and_complete(manifest) -> None:
    for shard_size in (1, 2, 4, 64):
        shards = shard_names(len(manifest), shard_size)
        assert len(shards) == num_shards(len(manifest), shard_size)
        gathered = pd.concat([shard_rows(manifest[::-1], s, shard_size) for s in shards])
        assert list(gathered["sample_id"]) == sorted(manifest["sample_id"])
    assert shard_names(0, 4) == [] and shard_names(130, 64) == ["0000", "0001", "0002"]
    with pytest.raises(ValueError, match="does not exist"):
        shard_rows(manifest, "0009", 4)
    with pytest.raises(ValueError, match="shard_size"):
        num_shards(10, 0)


def test_existing_jsons_are_skipped_and_force_rewrites_identically(tmp_path, manifest) -> None:
    out = tmp_path / "prompt_sets"
    _generate(manifest, out)
    before = _jsons(out)
    mtimes = {
        p.name: p.stat().st_mtime_ns
        for p in ProjectLayout(out).prompt_sets_dir("train").glob("*.json")
    }
    victim = ProjectLayout(out).promptset_json("train", manifest["safe_id"][2])
    victim.unlink()
    summary = _generate(manifest, out)
    assert (summary["generated"], summary["skipped"]) == (1, len(manifest) - 1)
    assert _jsons(out) == before
    for path in ProjectLayout(out).prompt_sets_dir("train").glob("*.json"):
        if path != victim:
            assert path.stat().st_mtime_ns == mtimes[path.name]
    summary = _generate(manifest, out, force=True)
    assert summary["generated"] == len(manifest)
    assert _jsons(out) == before


@pytest.mark.parametrize(
    "change", [{"prompt_seed": 78}, {"min_pairs": 2}, {"max_pairs": 5}, {"num_promptsets": 4}]
)
def test_jsons_from_other_settings_are_regenerated(tmp_path, manifest, change: dict) -> None:
    out = tmp_path / "prompt_sets"
    _generate(manifest, out)
    summary = _generate(manifest, out, **change)
    assert summary["generated"] == len(manifest) and summary["skipped"] == 0
    fresh = tmp_path / "fresh"
    _generate(manifest, fresh, **change)
    assert _jsons(out) == _jsons(fresh)


def test_damaged_json_is_regenerated(tmp_path: Path, manifest) -> None:
    out = tmp_path / "prompt_sets"
    _generate(manifest, out)
    before = _jsons(out)
    path = ProjectLayout(out).promptset_json("train", manifest["safe_id"][0])
    path.write_bytes(path.read_bytes()[:40])
    other = ProjectLayout(out).promptset_json("train", manifest["safe_id"][1])
    other.write_text("[]")
    summary = _generate(manifest, out)
    assert summary["generated"] == 2
    assert _jsons(out) == before


def test_a_broken_sample_is_reported_and_the_others_still_run(tmp_path, manifest) -> None:
    out = tmp_path / "prompt_sets"
    broken = manifest.copy()
    os.remove(broken.loc[0, "mask_path"])
    np.save(broken.loc[1, "mask_path"], np.zeros((24, 32), np.uint8))
    summary = _generate(broken, out)
    assert summary["failed"] == 2 and summary["generated"] == len(manifest) - 2
    failures = {f["sample_id"]: f["reason"] for f in summary["failures"]}
    assert failures[manifest.loc[0, "sample_id"]].startswith("mask unreadable")
    assert failures[manifest.loc[1, "sample_id"]] == "mask has no foreground pixel"
    assert not ProjectLayout(out).promptset_json("train", manifest.loc[0, "safe_id"]).exists()
    assert _jsons(out)  # the rest are written
    assert not [
        p
        for p in ProjectLayout(out).prompt_sets_dir("train").iterdir()
        if p.name.startswith(".tmp-")
    ]


# Rows that stage 1 never writes but a damaged/hand-edited manifest may hold (a stray carriage
# return can split a row, leaving "image_h" with text in it).
BAD_ROWS = {
    "image_h not a number": {"image_h": "name.png"},
    "image_w missing": {"image_w": ""},
    "image_h NaN": {"image_h": float("nan")},
    "sample_id NaN": {"sample_id": float("nan")},
    "mask_path not a string": {"mask_path": 3.5},
    "safe_id with a slash": {"safe_id": "a/../../escape"},
    "safe_id empty": {"safe_id": ""},
    "safe_id dot-dot": {"safe_id": ".."},
    "safe_id too long": {"safe_id": "x" * 300},
    "safe_id with a line break": {"safe_id": "a\rb"},
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_fails_alone_and_never_takes_down_the_shard(tmp_path, manifest, case) -> None:
    """The per-sample ``try`` covers everything per sample, parsing the row included."""
    out = tmp_path / "prompt_sets"
    broken = manifest.astype(object).copy()
    for column, value in BAD_ROWS[case].items():
        broken.at[2, column] = value
    summary = _generate(broken, out)
    assert summary["failed"] == 1, summary
    assert summary["generated"] == len(manifest) - 1
    (failure,) = summary["failures"]
    assert failure["reason"] and "\n" not in failure["reason"]
    assert isinstance(failure["sample_id"], str)
    written = {p for p in out.rglob("*") if p.is_file()}
    layout = ProjectLayout(out)
    expected = {
        layout.promptset_json("train", s) for i, s in enumerate(manifest["safe_id"]) if i != 2
    }
    assert written == expected  # nothing outside prompt_sets/train, no temp file left
    assert not (tmp_path / "escape").exists()


def test_empty_shard_writes_nothing(tmp_path: Path, manifest) -> None:
    summary = _generate(manifest.iloc[0:0], tmp_path / "prompt_sets")
    assert (summary["generated"], summary["skipped"], summary["failed"]) == (0, 0, 0)


def test_stand_alone_scripts(tmp_path: Path, repo_root: Path, data_tools, config_writer) -> None:
    """The stand-alone per-stage commands: build-manifests, then generate-promptsets.

    Class and stem names that look like numbers stay strings in the JSON ("007", not 7).
    """
    root = tmp_path / "data"
    images_root, masks_root = data_tools.make_dataset(root, {"007": 3, "b": 10})
    config = config_writer(
        tmp_path / "cfg.yaml",
        images_root,
        masks_root,
        tmp_path / "project",
        sam={"backend": "random_walker"},
        prompt_generation={"num_promptsets_train": 2},
        data={"shard_size": 4},
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for command in ("build-manifests", "generate-promptsets"):
        process = subprocess.run(
            [sys.executable, "-m", "laplace_head", command, "--config", str(config)],
            cwd=repo_root,
            capture_output=True,
            text=True,
            env=env,
        )
        assert process.returncode == 0, process.stderr
    project = tmp_path / "project"
    train = pd.read_csv(project / "manifests" / "train.csv", dtype=str)
    classes = set()
    for safe_id in train["safe_id"]:
        record = json.loads((project / "prompt_sets" / "train" / f"{safe_id}.json").read_text())
        assert record["sample_id"] == f"{record['class']}/{record['sample_id'].split('/')[1]}"
        assert len(record["promptsets"]) == 2
        classes.add(record["class"])
    assert classes == {"007", "b"}
    summaries = sorted((project / "prompt_sets" / "train" / "_shards").glob("*.json"))
    assert [p.name for p in summaries] == [f"shard_{s}.json" for s in shard_names(len(train), 4)]


def test_first_click_switch_adds_sets_and_regenerates_only_when_it_changes(tmp_path, manifest):
    out = tmp_path / "prompt_sets"
    _generate(manifest, out)
    regular_bytes = _jsons(out)
    assert all(b"first_click_promptsets" not in v for v in regular_bytes.values())  # regular layout
    summary = _generate(manifest, out, first_click_promptsets=2)
    assert summary["generated"] == len(manifest)
    for text in _jsons(out).values():
        record = json.loads(text)
        assert record["first_click_promptsets"] == 2
        assert [len(p["neg_points"]) for p in record["promptsets"][-2:]] == [0, 0]
    assert _generate(manifest, out, first_click_promptsets=2)["skipped"] == len(manifest)
    _generate(manifest, out)  # back to 0: the regular records again, byte for byte
    assert _jsons(out) == regular_bytes
