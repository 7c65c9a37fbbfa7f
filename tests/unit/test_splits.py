"""laplace_head.dataset.splits (and stage 1): stratified 80/10/10 (or data.split_fractions),
tiny classes, freezing."""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laplace_head.dataset.manifests import (
    REGISTRY,
    build_manifests,
    read_frozen_assignment,
    read_frozen_fractions,
)
from laplace_head.dataset.splits import (
    MAX_FRACTION,
    SPLITS,
    SplitFractions,
    assign_splits,
    target_sizes,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import ProjectLayout

TINY = {1: (1, 0, 0), 2: (1, 1, 0)} | {n: (n - 2, 1, 1) for n in range(3, 10)}


def _ids(class_name: str, n: int) -> list[str]:
    return [f"{class_name}/s{i:03d}" for i in range(n)]


def _counts(assignment: dict[str, str], ids: list[str]) -> tuple[int, int, int]:
    counter = Counter(assignment[i] for i in ids)
    return counter["train"], counter["val"], counter["test"]


@pytest.mark.parametrize("n", range(1, 10))
def test_tiny_class_targets(n: int) -> None:
    assert tuple(target_sizes(n).values()) == TINY[n]


@pytest.mark.parametrize("n", [10, 11, 14, 15, 16, 24, 25, 40, 95, 101, 1000, 1234])
def test_large_class_targets_are_80_10_10_within_rounding(n: int) -> None:
    sizes = target_sizes(n)
    assert sum(sizes.values()) == n
    assert sizes["val"] == sizes["test"]
    assert abs(sizes["val"] - 0.1 * n) <= 0.5
    assert abs(sizes["train"] - 0.8 * n) <= 1.0


def test_targets_always_sum_to_n() -> None:
    for n in range(0, 500):
        sizes = target_sizes(n)
        assert sum(sizes.values()) == n and min(sizes.values()) >= 0


@pytest.mark.parametrize("n", list(range(1, 13)) + [40, 97])
def test_every_sample_lands_in_exactly_one_split_with_target_counts(n: int) -> None:
    samples = {"tiny": _ids("tiny", n), "other": _ids("other", 20)}
    assignment, dropped = assign_splits(samples, split_seed=123)
    assert dropped == []
    assert set(assignment) == set(samples["tiny"]) | set(samples["other"])
    assert set(assignment.values()) <= set(SPLITS)
    assert _counts(assignment, samples["tiny"]) == tuple(target_sizes(n).values())
    assert _counts(assignment, samples["other"]) == (16, 2, 2)


def test_deterministic_and_independent_of_input_order() -> None:
    samples = {"a": _ids("a", 37), "b": _ids("b", 12), "c": _ids("c", 5)}
    reference, _ = assign_splits(samples, split_seed=7)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = {}
        for class_name in rng.sample(sorted(samples), k=3):
            ids = list(samples[class_name])
            rng.shuffle(ids)
            shuffled[class_name] = ids
        assert assign_splits(shuffled, split_seed=7)[0] == reference
    assert assign_splits(samples, split_seed=8)[0] != reference


def test_a_class_split_does_not_depend_on_other_classes() -> None:
    alone, _ = assign_splits({"a": _ids("a", 30)}, split_seed=5)
    together, _ = assign_splits({"a": _ids("a", 30), "b": _ids("b", 30)}, split_seed=5)
    assert {k: v for k, v in together.items() if k.startswith("a/")} == alone


def test_freeze_keeps_existing_assignments() -> None:
    first, _ = assign_splits({"a": _ids("a", 20)}, split_seed=1)
    again, dropped = assign_splits({"a": _ids("a", 20)}, split_seed=999, frozen=first)
    assert again == first and dropped == []


def test_freeze_assigns_new_samples_by_the_same_rule() -> None:
    old_ids = _ids("a", 10)
    first, _ = assign_splits({"a": old_ids}, split_seed=1)
    assert _counts(first, old_ids) == (8, 1, 1)
    all_ids = _ids("a", 20)
    second, _ = assign_splits({"a": all_ids}, split_seed=1, frozen=first)
    assert {sid: second[sid] for sid in old_ids} == first
    # The new class size 20 targets 16/2/2: the ten new samples fill the shortfall.
    assert _counts(second, all_ids) == (16, 2, 2)
    new_ids = all_ids[10:]
    assert _counts(second, new_ids) == (8, 1, 1)


def test_freeze_new_class_and_growing_tiny_class() -> None:
    first, _ = assign_splits({"a": _ids("a", 1)}, split_seed=3)
    assert first == {"a/s000": "train"}
    second, _ = assign_splits({"a": _ids("a", 3), "b": _ids("b", 10)}, split_seed=3, frozen=first)
    assert second["a/s000"] == "train"
    assert _counts(second, _ids("a", 3)) == (1, 1, 1)
    assert _counts(second, _ids("b", 10)) == (8, 1, 1)


def test_freeze_never_moves_kept_samples_even_when_a_class_shrinks() -> None:
    first, _ = assign_splits({"a": _ids("a", 20)}, split_seed=2)
    remaining = [sid for sid in _ids("a", 20) if first[sid] != "train"]
    second, dropped = assign_splits({"a": remaining}, split_seed=2, frozen=first)
    assert second == {sid: first[sid] for sid in remaining}
    assert dropped == sorted(sid for sid in first if first[sid] == "train")


def test_freeze_drops_invalid_samples_and_reports_them() -> None:
    first, _ = assign_splits({"a": _ids("a", 12)}, split_seed=4)
    valid_now = _ids("a", 12)[2:]
    second, dropped = assign_splits({"a": valid_now}, split_seed=4, frozen=first)
    assert dropped == _ids("a", 12)[:2]
    assert set(second) == set(valid_now)
    assert all(second[sid] == first[sid] for sid in valid_now)


def test_unknown_frozen_split_values_are_reassigned() -> None:
    second, _ = assign_splits({"a": _ids("a", 10)}, split_seed=4, frozen={"a/s000": ""})
    assert second["a/s000"] in SPLITS


# --- stage 1 on disk -------------------------------------------------------------------------


def _split_of(manifests: Path) -> dict[str, str]:
    frame = pd.read_csv(manifests / "all_samples.csv", dtype=str, keep_default_na=False)
    return dict(zip(frame["sample_id"], frame["split"]))


def test_build_manifests_freezes_splits_across_reruns(tmp_path: Path, dataset_factory, caplog):
    images_root, masks_root = dataset_factory({"a": 10, "b": 4})
    manifests = tmp_path / "project" / "manifests"
    report = build_manifests(
        images_root, masks_root, ProjectLayout(manifests.parent), split_seed=11
    )
    assert report["split_sizes"] == {"train": 10, "val": 2, "test": 2}
    first = _split_of(manifests)

    # Three new samples in a, one new class, one sample broken, one deleted.
    for index in range(10, 13):
        shutil.copy(images_root / "a" / "a_000.png", images_root / "a" / f"a_{index:03d}.png")
        shutil.copy(masks_root / "a" / "a_000.npy", masks_root / "a" / f"a_{index:03d}.npy")
    dataset_factory({"c": 10})
    np.save(masks_root / "a" / "a_001.npy", np.zeros((24, 32), np.uint8))
    (images_root / "b" / "b_000.png").unlink()
    (masks_root / "b" / "b_000.npy").unlink()

    with caplog.at_level(logging.INFO, logger="laplace_head"):
        report = build_manifests(
            images_root, masks_root, ProjectLayout(manifests.parent), split_seed=999
        )
    second = _split_of(manifests)
    kept = [sid for sid in first if sid not in ("a/a_001", "b/b_000")]
    assert {sid: second[sid] for sid in kept} == {sid: first[sid] for sid in kept}
    assert second["a/a_001"] == ""  # invalid now: no split
    assert "b/b_000" not in second
    assert report["dropped_since_previous_run"] == ["a/a_001", "b/b_000"]
    assert report["frozen_from_previous_run"] == len(kept)
    assert report["newly_assigned"] == 3 + 10
    assert "dropped 2 previously assigned samples" in caplog.text
    # a: 12 valid now (target 10/1/1); the new ones fill what the kept ones leave short.
    valid_a = [sid for sid in second if sid.startswith("a/") and second[sid]]
    assert len(valid_a) == 12 and _counts(second, valid_a) == (10, 1, 1)
    per_class = {row["class"]: row for row in report["per_class"]}
    assert (per_class["c"]["train"], per_class["c"]["val"], per_class["c"]["test"]) == (8, 1, 1)

    # Split CSVs agree with all_samples.csv and the registry.
    for split in SPLITS:
        frame = pd.read_csv(manifests / f"{split}.csv", dtype=str, keep_default_na=False)
        assert list(frame["sample_id"]) == sorted(frame["sample_id"])
        assert set(frame["sample_id"]) == {s for s, sp in second.items() if sp == split}
    assert read_frozen_assignment(ProjectLayout(manifests.parent)) == {
        s: sp for s, sp in second.items() if sp
    }


def test_only_deleting_the_manifests_gives_a_fresh_split(tmp_path: Path, dataset_factory):
    images_root, masks_root = dataset_factory({"a": 30})
    manifests = tmp_path / "manifests"
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=1)
    first = _split_of(manifests)
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=2)
    assert _split_of(manifests) == first  # another seed does not re-split
    shutil.rmtree(manifests)
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=2)
    fresh = _split_of(manifests)
    assert fresh != first
    assert Counter(fresh.values()) == Counter(first.values()) == {"train": 24, "val": 3, "test": 3}


def test_freeze_falls_back_to_split_csvs_without_registry(tmp_path: Path, dataset_factory):
    images_root, masks_root = dataset_factory({"a": 30})
    manifests = tmp_path / "manifests"
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=1)
    first = _split_of(manifests)
    ProjectLayout(manifests.parent).manifest(REGISTRY).unlink()
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=2)
    assert _split_of(manifests) == first


def test_manifest_outputs_are_byte_identical_on_rerun(tmp_path: Path, dataset_factory):
    """Also across sequential and process-pool validation (>= 64 samples use the pool)."""
    images_root, masks_root = dataset_factory({"a": 60, "b": 6})
    manifests = tmp_path / "manifests"
    build_manifests(images_root, masks_root, ProjectLayout(manifests.parent), split_seed=1)
    names = ["all_samples.csv", "train.csv", "val.csv", "test.csv", f"{REGISTRY}.csv"]
    before = {name: (manifests / name).read_bytes() for name in names}
    report = build_manifests(
        images_root, masks_root, ProjectLayout(manifests.parent), split_seed=1, workers=2
    )
    assert {name: (manifests / name).read_bytes() for name in names} == before
    saved = json.loads((manifests / "manifest_report.json").read_text())
    assert saved["frozen_from_previous_run"] == report["frozen_from_previous_run"] == 66


# --- data.split_fractions ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 11, 14, 15, 25, 58, 97, 190, 1234])
def test_fractions_set_the_val_and_test_shares(n: int) -> None:
    sizes = target_sizes(n, SplitFractions(0.15, 0.2))
    assert sum(sizes.values()) == n
    assert abs(sizes["val"] - 0.15 * n) <= 0.5 and abs(sizes["test"] - 0.2 * n) <= 0.5
    assert target_sizes(n, SplitFractions(0.1, 0.1)) == target_sizes(n)


def test_fractions_keep_tiny_classes_and_one_sample_per_split() -> None:
    fractions = SplitFractions(0.01, 0.4)
    assert target_sizes(10, fractions) == {"train": 5, "val": 1, "test": 4}
    for n in range(1, 10):
        assert tuple(target_sizes(n, fractions).values()) == TINY[n]


def test_default_fractions_are_the_schemas() -> None:
    from laplace_head.config.loader import load_schema

    schema = load_schema()["properties"]["data"]["properties"]["split_fractions"]
    assert SplitFractions.default() == SplitFractions(*schema["default"])
    assert schema["items"]["maximum"] == MAX_FRACTION


@pytest.mark.parametrize("bad", [0.0, -0.1, MAX_FRACTION + 0.01, True])
def test_bad_fractions_are_refused(bad) -> None:
    with pytest.raises(ValueError, match=r"split fraction val = .*data\.split_fractions"):
        SplitFractions(bad, 0.1)


def test_build_manifests_draws_and_records_the_fractions(tmp_path: Path, dataset_factory):
    images_root, masks_root = dataset_factory({"a": 40})
    layout = ProjectLayout(tmp_path / "project")
    report = build_manifests(
        images_root, masks_root, layout, split_seed=1, fractions=SplitFractions(0.15, 0.25)
    )
    assert report["split_sizes"] == {"train": 24, "val": 6, "test": 10}
    registry = pd.read_csv(layout.manifest(REGISTRY))
    assert set(registry["val_fraction"]) == {0.15} and set(registry["test_fraction"]) == {0.25}
    assert read_frozen_fractions(layout) == SplitFractions(0.15, 0.25)


def test_default_fractions_give_todays_split(tmp_path: Path, dataset_factory):
    """The default draws the 80/10/10 split byte for byte (registry: only fraction columns)."""
    images_root, masks_root = dataset_factory({"a": 30, "b": 6})
    default_root, explicit_root = tmp_path / "default", tmp_path / "explicit"
    build_manifests(images_root, masks_root, ProjectLayout(default_root), split_seed=5)
    build_manifests(
        images_root,
        masks_root,
        ProjectLayout(explicit_root),
        split_seed=5,
        fractions=SplitFractions(0.1, 0.1),
    )
    for name in ("all_samples.csv", "train.csv", "val.csv", "test.csv", f"{REGISTRY}.csv"):
        assert (default_root / "manifests" / name).read_bytes() == (
            explicit_root / "manifests" / name
        ).read_bytes()
    assert Counter(_split_of(default_root / "manifests").values()) == {
        "train": 28,
        "val": 4,
        "test": 4,
    }


def test_other_fractions_on_a_frozen_split_are_refused(tmp_path: Path, dataset_factory):
    images_root, masks_root = dataset_factory({"a": 30})
    layout = ProjectLayout(tmp_path / "project")
    build_manifests(images_root, masks_root, layout, split_seed=1)
    before = {path.name: path.read_bytes() for path in layout.manifests_dir.iterdir()}
    with pytest.raises(LaplaceHeadError) as error:
        build_manifests(
            images_root, masks_root, layout, split_seed=1, fractions=SplitFractions(0.15, 0.15)
        )
    message = str(error.value)
    assert str(layout.manifest(REGISTRY)) in message
    assert "[val, test] = [0.1, 0.1]" in message and "asks for [0.15, 0.15]" in message
    assert "set data.split_fractions back" in message.lower()
    assert f"delete {layout.manifests_dir}" in message
    assert {path.name: path.read_bytes() for path in layout.manifests_dir.iterdir()} == before


@pytest.mark.parametrize("without_registry", [False, True])
def test_a_split_without_recorded_fractions_was_drawn_80_10_10(
    tmp_path: Path, dataset_factory, without_registry: bool
):
    """A registry without the fraction columns (or split CSVs without a registry) holds a
    default split: the default reruns, other fractions are refused."""
    images_root, masks_root = dataset_factory({"a": 30})
    layout = ProjectLayout(tmp_path / "project")
    build_manifests(images_root, masks_root, layout, split_seed=1)
    first = _split_of(layout.manifests_dir)
    registry = layout.manifest(REGISTRY)
    if without_registry:
        registry.unlink()
    else:
        frame = pd.read_csv(registry, dtype=str, keep_default_na=False)
        frame[["sample_id", "split"]].to_csv(registry, index=False)
    assert read_frozen_fractions(layout) == SplitFractions.default()
    with pytest.raises(LaplaceHeadError, match="split_registry"):
        build_manifests(
            images_root, masks_root, layout, split_seed=1, fractions=SplitFractions(0.2, 0.1)
        )
    build_manifests(images_root, masks_root, layout, split_seed=1)
    assert _split_of(layout.manifests_dir) == first
