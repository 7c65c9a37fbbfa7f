"""Stage 4: the training index, built from fake stage-3 folders in the contract layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from laplace_head.cache.index import (
    FAILURE_COLUMNS,
    INDEX_COLUMNS,
    TrainingIndexError,
    build_index,
    read_index,
    write_training_index,
)
from laplace_head.cache.promptset_format import meta_fields
from laplace_head.cli import main as cli_main
from laplace_head.layout import ProjectLayout

REPO = Path(__file__).resolve().parents[2]


def write_promptset(folder: Path, k: int = 2, branch: int = 1, seed: int = 0) -> None:
    """One complete prompt set: three float16 (256, 256) npy files and meta.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("logits_256", "pos_map", "neg_map"):
        np.save(folder / f"{name}.npy", rng.normal(0, 3, (256, 256)).astype(np.float16))
    scores = [0.5, 0.9, 0.7]  # keys as laplace_head.cache.precompute writes them
    meta = {"k": k, "branch_index": branch, "scores": scores, "score": scores[branch]}
    (folder / "meta.json").write_text(json.dumps(meta))


def make_split(
    root: Path, promptsets: dict[str, int], split: str = "train", cls: str = "cat"
) -> tuple[Path, Path]:
    """Split CSV with one sample per ``promptsets`` key (stem -> number of prompt sets)."""
    records = []
    precompute = root / "sam_precompute" / split
    for number, (stem, count) in enumerate(sorted(promptsets.items())):
        safe_id = f"{cls}__{stem}"
        records.append(
            {
                "sample_id": f"{cls}/{stem}",
                "safe_id": safe_id,
                "class": cls,
                "stem": stem,
                "image_path": str(root / "images" / cls / f"{stem}.png"),
                "mask_path": str(root / "masks" / cls / f"{stem}.npy"),
                "image_h": 30,
                "image_w": 40,
                "split": split,
            }
        )
        for promptset_id in range(count):
            write_promptset(
                precompute / safe_id / f"promptset_{promptset_id:04d}",
                k=promptset_id + 1,
                seed=number * 100 + promptset_id,
            )
    split_csv = root / "manifests" / f"{split}.csv"
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    columns = ["sample_id", "safe_id", "class", "stem", "image_path", "mask_path"]
    pd.DataFrame(records, columns=[*columns, "image_h", "image_w", "split"]).to_csv(
        split_csv, index=False
    )
    return split_csv, precompute


def test_complete_promptsets_are_indexed_sorted_with_meta_fields(tmp_path):
    split_csv, precompute = make_split(tmp_path, {"b": 3, "a": 2})
    index, report = build_index("train", split_csv, precompute)
    assert list(index.columns) == INDEX_COLUMNS
    assert list(zip(index.sample_id, index.promptset_id)) == [
        ("cat/a", 0),
        ("cat/a", 1),
        ("cat/b", 0),
        ("cat/b", 1),
        ("cat/b", 2),
    ]
    assert index.k_pairs.tolist() == [1, 2, 1, 2, 3]
    assert (index.branch == 1).all() and np.allclose(index.score, 0.9)
    row = index.iloc[3]
    folder = precompute / "cat__b" / "promptset_0001"
    assert row.logits_256_path == str(folder / "logits_256.npy")
    assert row.meta_path == str(folder / "meta.json")
    assert (row.image_h, row.image_w, row.split) == (30, 40, "train")
    assert report["n_rows"] == 5 and report["n_samples"] == 2
    assert report["mean_k_pairs"] == pytest.approx(9 / 5)
    assert report["n_failures"] == 0 and report["failures"].empty


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "pos_map.npy").unlink(), "pos_map.npy missing"),
        (lambda f: (f / "meta.json").unlink(), "meta.json missing"),
        (lambda f: (f / "meta.json").write_text("{not json"), "meta.json unreadable"),
        (lambda f: (f / "meta.json").write_text('{"branch_index": 0}'), "lacks k/branch"),
        (lambda f: np.save(f / "neg_map.npy", np.zeros((256, 256), np.float32)), "float16"),
        (lambda f: np.save(f / "logits_256.npy", np.zeros((64, 64), np.float16)), "(64, 64)"),
        (
            lambda f: (f / "logits_256.npy").write_bytes(
                (f / "logits_256.npy").read_bytes()[:1000]
            ),
            "truncated",
        ),
        (lambda f: (f / "logits_256.npy").write_bytes(b"garbage"), "unreadable"),
    ],
)
def test_incomplete_or_corrupt_promptset_is_a_failure_row(tmp_path, damage, reason):
    split_csv, precompute = make_split(tmp_path, {"a": 2, "b": 1})
    damage(precompute / "cat__a" / "promptset_0001")
    index, report = build_index("train", split_csv, precompute)
    assert list(zip(index.sample_id, index.promptset_id)) == [("cat/a", 0), ("cat/b", 0)]
    failures = report["failures"]
    assert list(failures.columns) == FAILURE_COLUMNS
    assert failures[["sample_id", "promptset_id"]].values.tolist() == [["cat/a", 1]]
    assert reason in failures.reason.iloc[0]


def test_samples_without_complete_promptsets_and_shard_failures_are_reported(tmp_path):
    split_csv, precompute = make_split(tmp_path, {"a": 1, "b": 0, "c": 1})
    (precompute / "cat__c" / "promptset_0000" / "meta.json").unlink()
    summary = tmp_path / "shard_0000.json"
    failures = [
        {"sample_id": "cat/b", "promptset_id": None, "reason": "image fails to decode"},
        {"sample_id": "cat/c", "promptset_id": 0, "stage": "segmenter", "reason": "CUDA OOM"},
    ]
    summary.write_text(json.dumps({"done": 1, "skipped": 0, "failed": 2, "failures": failures}))
    index, report = build_index("train", split_csv, precompute, [summary])
    assert index.sample_id.tolist() == ["cat/a"]
    assert report["samples_without_promptsets"] == ["cat/b", "cat/c"]
    rows = report["failures"].astype(object).where(report["failures"].notna(), None)
    assert rows.values.tolist() == [
        ["cat/b", None, "no complete prompt set"],
        ["cat/b", None, "precompute: image fails to decode"],
        ["cat/c", None, "no complete prompt set"],
        ["cat/c", 0, "meta.json missing"],
        ["cat/c", 0, "precompute (segmenter): CUDA OOM"],
    ]


def test_promptsets_listed_in_prompt_json_but_never_written_are_reported(tmp_path):
    split_csv, precompute = make_split(tmp_path, {"a": 2})
    prompt_dir = ProjectLayout(tmp_path).prompt_sets_dir("train")
    prompt_dir.mkdir(parents=True)
    listed = [{"promptset_id": i, "k": 1, "pos_points": [], "neg_points": []} for i in range(3)]
    (prompt_dir / "cat__a.json").write_text(json.dumps({"promptsets": listed}))
    layout = ProjectLayout(tmp_path)
    index, report = build_index(
        "train", split_csv, precompute, promptset_json=lambda s: layout.promptset_json("train", s)
    )
    assert len(index) == 2
    assert report["failures"].values.tolist() == [["cat/a", 2, "not written"]]


def test_samples_outside_the_split_and_stray_folders_are_ignored(tmp_path):
    split_csv, precompute = make_split(tmp_path, {"a": 1})
    write_promptset(precompute / "cat__zzz" / "promptset_0000")
    (precompute / "cat__a" / "notes").mkdir()
    (precompute / "_shards").mkdir()
    index, _ = build_index("train", split_csv, precompute)
    assert index.safe_id.tolist() == ["cat__a"]


def test_meta_fields_reads_exactly_what_the_writer_writes():
    assert meta_fields({"k": 3, "branch_index": 2, "scores": [0.1, 0.2, 0.8], "score": 0.8}) == (
        3,
        2,
        0.8,
    )
    # key names the stage-3 writer never writes are not accepted
    for meta in (
        {"k_pairs": 1, "branch_index": 0, "score": 0.5},
        {"k": 1, "branch": 0, "score": 0.5},
    ):
        with pytest.raises(KeyError):
            meta_fields(meta)


def test_write_training_index_round_trip_and_log(tmp_path, caplog):
    split_csv, precompute = make_split(tmp_path, {"a": 2, "b": 1}, cls="7")
    layout = ProjectLayout(tmp_path)
    index_csv, failures = layout.training_index("train"), layout.training_failures("train")
    with caplog.at_level(logging.INFO, logger="laplace_head.cache.index"):
        report = write_training_index("train", split_csv, precompute, [], index_csv, failures)
    assert "3 rows, 2 unique samples" in caplog.text and "mean k_pairs 1.33" in caplog.text
    assert report["n_rows"] == 3
    frame = read_index(index_csv)
    expected, _ = build_index("train", split_csv, precompute)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert frame["class"].tolist() == ["7", "7", "7"]  # numeric-looking text stays text
    assert pd.read_csv(failures).columns.tolist() == FAILURE_COLUMNS
    assert sorted(p.name for p in index_csv.parent.iterdir()) == [
        "train_failures.csv",
        "train_index.csv",
    ]


def test_empty_split_gives_header_only_csv(tmp_path):
    split_csv, precompute = make_split(tmp_path, {}, split="test")
    index_csv = tmp_path / "out" / "test_index.csv"
    report = write_training_index(
        "test", split_csv, precompute, [], index_csv, index_csv.with_name("failures.csv")
    )
    assert report["n_rows"] == 0 and report["n_samples"] == 0
    assert index_csv.read_text().strip() == ",".join(INDEX_COLUMNS)
    assert read_index(index_csv).empty


def test_missing_split_csv_and_broken_summary_are_user_errors(tmp_path):
    with pytest.raises(TrainingIndexError, match="build_manifests"):
        build_index("val", tmp_path / "nope.csv", tmp_path)
    split_csv, precompute = make_split(tmp_path, {"a": 1})
    bad = tmp_path / "shard_0000.json"
    bad.write_text("{")
    with pytest.raises(TrainingIndexError, match="shard_0000.json"):
        build_index("train", split_csv, precompute, [bad])


def test_standalone_script(tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_split(project, {"a": 2}, split="val")
    summary = ProjectLayout(project).shard_summary("sam_precompute", "val", 0)
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"failures": []}))  # the split's one shard (shard_size 64)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"project_root": str(project)}}))
    cli_main(["build-training-index", "--config", str(config), "--split", "val"])
    out = project / "training_data" / "no_image"
    assert len(read_index(out / "val_index.csv")) == 2
    assert (out / "val_failures.csv").is_file()
    assert (project / "logs" / "build_training_index" / "val.log").is_file()
    assert not (out / "train_index.csv").exists()
