"""laplace_head.interactive.shard and .records: one stage-8 shard, its JSONL, and resume after a
kill."""

from __future__ import annotations

import json

import pytest
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.dataset.demo import write_demo_dataset
from laplace_head.evaluation.active_prompting import aggregate
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.records import PARTIAL_SUFFIX, read_records
from laplace_head.interactive.shard import run_shard


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage8")
    run = make_fitted_run(root / "project")
    images_root, masks_root = write_demo_dataset(root / "data", per_class=1)
    rows = []
    valid = [p for p in sorted(images_root.glob("*/*")) if "broken" not in p.stem]
    for image in valid[:2]:
        mask = next((masks_root / image.parent.name).glob(image.stem + ".*"))
        rows.append(
            {
                "sample_id": f"{image.parent.name}/{image.stem}",
                "class": image.parent.name,
                "image_path": str(image),
                "mask_path": str(mask),
            }
        )
    settings = {
        "segmenter": {"backend": "random_walker", "random_walker_max_side": 48},
        "prompt_sigma": 8.0,
        "sam_mask_input": False,
        "suggest_policy": "bald_region",
    }
    predictor = InteractivePredictor.from_settings(settings, run.laplace_dir)
    return root, rows, predictor


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shard_records_every_image_and_policy(setting):
    root, rows, predictor = setting
    out = root / "shard_0000.jsonl"
    summary = run_shard(rows, predictor, out, ["oracle", "random"], 3, seed=0)
    records = _lines(out)
    assert summary == {"written": 4, "skipped": 0, "failures": []}
    assert [(r["sample_id"], r["policy"]) for r in records] == sorted(
        (row["sample_id"], p) for row in rows for p in ("oracle", "random")
    )
    for record in records:
        assert 1 <= len(record["iou_head"]) == len(record["iou_base"]) <= 3
        assert record["class"] == record["sample_id"].split("/")[0]
    assert not out.with_name(out.name + PARTIAL_SUFFIX).exists()
    # The report reads the shard through the same module that wrote it.
    assert read_records([out]) == records
    result = aggregate(records, 3, n_bootstrap=100)
    assert result["policies"] == ["oracle", "random"]
    assert result["overall"]["oracle"]["head"]["n_images"] == len(rows)


def test_resume_skips_finished_images_and_ignores_a_cut_line(setting):
    root, rows, predictor = setting
    reference = root / "reference.jsonl"
    run_shard(rows, predictor, reference, ["oracle", "random"], 3, seed=0)
    first = reference.read_text().splitlines()[0]
    out = root / "resumed.jsonl"
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    partial.write_text(first + "\n" + first[: len(first) // 2])  # a kill mid-line
    summary = run_shard(rows, predictor, out, ["oracle", "random"], 3, seed=0)
    assert (summary["skipped"], summary["written"]) == (1, 3)
    assert out.read_text() == reference.read_text()


def test_an_unreadable_image_fails_alone(setting, tmp_path):
    root, rows, predictor = setting
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = {**rows[0], "sample_id": "bad/x", "class": "bad", "image_path": str(broken)}
    summary = run_shard([bad, rows[1]], predictor, tmp_path / "s.jsonl", ["random"], 2, seed=0)
    assert summary["written"] == 1 and summary["failures"][0]["sample_id"] == "bad/x"
