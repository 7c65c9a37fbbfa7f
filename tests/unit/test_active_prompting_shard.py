"""laplace_head.interactive.shard and .records: one stage-8 shard, its JSONL, and resume after a
kill."""

from __future__ import annotations

import json

import numpy as np
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


IDENTITY = {"settings": {"prompt_sigma": 8.0}, "posterior_md5": "0" * 32}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shard_records_every_image_and_policy(setting):
    root, rows, predictor = setting
    out = root / "shard_0000.jsonl"
    summary = run_shard(rows, predictor, out, ["oracle", "random"], 3, seed=0, identity=IDENTITY)
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


def test_a_policy_entry_with_settings_clicks_as_its_rule_at_those_settings(setting):
    """bald_region@region_error_level=0.25 is bald_region at the predictor's own (default)
    level: the same clicks and IoUs; at level 0.1 it runs as a rule of its own, with its
    twin at the same level."""
    root, rows, predictor = setting
    out = root / "entries.jsonl"
    entries = [
        "bald_region",
        "bald_region@region_error_level=0.25",
        "bald_region@region_error_level=0.1",
        "map_region@region_error_level=0.1",
    ]
    summary = run_shard(rows[:1], predictor, out, entries, 3, seed=0, identity=IDENTITY)
    assert summary["failures"] == [] and summary["written"] == len(entries)
    by_policy = {r["policy"]: r for r in _lines(out)}
    assert set(by_policy) == set(entries)
    same = by_policy["bald_region@region_error_level=0.25"]
    for key in ("iou_head", "iou_base", "clicks"):
        assert same[key] == by_policy["bald_region"][key], key
    result = aggregate(list(by_policy.values()), 3, n_bootstrap=50)
    assert result["twins_not_run"] == {
        "bald_region": "map_region",
        "bald_region@region_error_level=0.25": "map_region@region_error_level=0.25",
    }


class _Killed(BaseException):
    """What a kill does to a shard: nothing after it runs."""


def _kill_on_second_image(monkeypatch, predictor):
    real, seen = predictor.set_image, []

    def set_image(image):
        if seen and not np.array_equal(seen[0], image):
            raise _Killed
        seen.append(image)
        real(image)

    monkeypatch.setattr(predictor, "set_image", set_image)


def _killed_run(monkeypatch, predictor, rows, out, *args, **kwargs):
    """Run a shard until its second image; the resume file it leaves."""
    with monkeypatch.context() as patch:
        _kill_on_second_image(patch, predictor)
        with pytest.raises(_Killed):
            run_shard(rows, predictor, out, *args, **kwargs)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    assert partial.is_file()
    return partial


def test_resume_skips_finished_images_and_ignores_a_cut_line(setting, monkeypatch):
    root, rows, predictor = setting
    reference = root / "reference.jsonl"
    run_shard(rows, predictor, reference, ["oracle", "random"], 3, seed=0, identity=IDENTITY)
    out = root / "resumed.jsonl"
    args = (["oracle", "random"], 3)
    partial = _killed_run(monkeypatch, predictor, rows, out, *args, seed=0, identity=IDENTITY)
    first = reference.read_text().splitlines()[0]
    with open(partial, "a") as handle:
        handle.write(first[: len(first) // 2])  # a kill mid-line
    summary = run_shard(rows, predictor, out, *args, seed=0, identity=IDENTITY)
    assert (summary["skipped"], summary["written"]) == (2, 2)
    assert out.read_text() == reference.read_text()


@pytest.mark.parametrize(
    "change",
    ["max_clicks", "seed", "policies", "identity", "samples"],
)
def test_a_resume_file_written_with_other_settings_is_not_reused(
    setting, monkeypatch, tmp_path, change, caplog
):
    root, rows, predictor = setting
    now = {"policies": ["oracle", "random"], "max_clicks": 3, "seed": 0, "identity": IDENTITY}
    before = dict(now)
    before.update(
        {
            "max_clicks": {"max_clicks": 2},
            "seed": {"seed": 1},
            "policies": {"policies": ["oracle", "random", "entropy"]},
            "identity": {"identity": {**IDENTITY, "posterior_md5": "1" * 32}},
            "samples": {},
        }[change]
    )
    before_rows = [rows[0], {**rows[1], "sample_id": "x/other"}] if change == "samples" else rows

    def call(rows_, out, s):
        return run_shard(
            rows_,
            predictor,
            out,
            s["policies"],
            s["max_clicks"],
            seed=s["seed"],
            identity=s["identity"],
        )

    reference = tmp_path / "reference.jsonl"
    call(rows, reference, now)
    out = tmp_path / "shard.jsonl"
    with monkeypatch.context() as patch:
        _kill_on_second_image(patch, predictor)
        with pytest.raises(_Killed):
            call(before_rows, out, before)
    with caplog.at_level("INFO", logger="laplace_head.interactive.records"):
        summary = call(rows, out, now)
    assert summary["skipped"] == 0
    assert out.read_text() == reference.read_text()
    assert "not reused" in caplog.text and str(out) in caplog.text


def test_resume_skips_malformed_foreign_and_duplicate_lines_naming_the_file(
    setting, monkeypatch, tmp_path, caplog
):
    root, rows, predictor = setting
    args = (["oracle", "random"], 3)
    reference = tmp_path / "reference.jsonl"
    run_shard(rows, predictor, reference, *args, seed=0, identity=IDENTITY)
    out = tmp_path / "shard.jsonl"
    partial = _killed_run(monkeypatch, predictor, rows, out, *args, seed=0, identity=IDENTITY)
    kept = partial.read_bytes().splitlines()[1:]
    assert len(kept) == 2
    foreign = {**json.loads(kept[0]), "sample_id": "x/not_in_this_shard"}
    other_budget = {**json.loads(kept[0]), "max_clicks": 8, "policy": "entropy"}
    with open(partial, "ab") as handle:
        for line in (
            b"[]",
            b'{"policy": "oracle"}',
            b"\xff\xfe not utf-8",
            kept[0],  # a duplicate
            json.dumps(foreign).encode(),
            json.dumps(other_budget).encode(),
            b"",
        ):
            handle.write(line + b"\n")
    with caplog.at_level("WARNING", logger="laplace_head.interactive.records"):
        summary = run_shard(rows, predictor, out, *args, seed=0, identity=IDENTITY)
    assert (summary["skipped"], summary["written"]) == (2, 2)
    assert out.read_text() == reference.read_text()
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(skipped) == 6
    assert all(message.startswith(f"{partial} line ") for message in skipped)
    assert any("not UTF-8" in message for message in skipped)
    assert any("a second record" in message for message in skipped)


def test_an_unreadable_image_fails_alone(setting, tmp_path):
    root, rows, predictor = setting
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = {**rows[0], "sample_id": "bad/x", "class": "bad", "image_path": str(broken)}
    summary = run_shard(
        [bad, rows[1]], predictor, tmp_path / "s.jsonl", ["random"], 2, seed=0, identity=IDENTITY
    )
    assert summary["written"] == 1 and summary["failures"][0]["sample_id"] == "bad/x"
