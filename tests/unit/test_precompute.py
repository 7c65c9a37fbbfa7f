"""Stage 3 precompute: tiny SAM end to end on CPU, resume, failures, random_walker, script."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.tiny_sam import CountingSam
from PIL import Image

from laplace_head.cache.precompute import (
    ARRAY_FILES,
    META_FILE,
    precompute_shard,
    promptset_dir,
    read_promptset_outputs,
    run_precompute,
)
from laplace_head.cli import main as cli_main
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import ProjectLayout
from laplace_head.prompts.sampling import gaussian_prompt_map, rescale_points, sample_promptsets
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter
from laplace_head.util.atomic import read_json

REPO = Path(__file__).resolve().parents[2]
SIZES = {"cls/a": (40, 56), "cls/b": (64, 48), "other/c": (30, 30)}
N_PROMPTSETS = 3


def make_project(root: Path, split: str = "train", sizes=SIZES) -> tuple[list[Path], list[str]]:
    """Images, masks, a split manifest and stage-2 prompt JSONs under ``root``."""
    rng = np.random.default_rng(0)
    rows, prompt_paths = [], []
    for sample_id, (height, width) in sorted(sizes.items()):
        cls, stem = sample_id.split("/")
        safe_id = f"{cls}__{stem}"
        image_path = root / "images" / cls / f"{stem}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image_path)
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
        promptsets = sample_promptsets(mask, sample_id, N_PROMPTSETS, 1, 3, 7)
        record = {
            "sample_id": sample_id,
            "safe_id": safe_id,
            "class": cls,
            "split": split,
            "image_path": str(image_path),
            "mask_path": str(root / "masks" / f"{safe_id}.npy"),
            "image_h": height,
            "image_w": width,
            "mask_resized": False,
            "prompt_seed": 7,
            "min_pairs": 1,
            "max_pairs": 3,
            "promptsets": [p.to_json() for p in promptsets],
        }
        prompt_path = root / "prompt_sets" / split / f"{safe_id}.json"
        prompt_path.parent.mkdir(parents=True, exist_ok=True)
        prompt_path.write_text(json.dumps(record))
        prompt_paths.append(prompt_path)
        rows.append({"sample_id": sample_id, "safe_id": safe_id, "split": split})
    manifest = root / "manifests" / f"{split}.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return prompt_paths, [r["sample_id"] for r in rows]


@pytest.fixture
def project(tmp_path):
    paths, sample_ids = make_project(tmp_path)
    return tmp_path, paths, sample_ids


def _run(project_root: Path, paths, segmenter, sigma=8.0, **kwargs):
    return precompute_shard(
        paths,
        project_root / "sam_precompute" / "train",
        segmenter,
        sigma,
        project_root / "summary.json",
        **kwargs,
    )


def _all_dirs(project_root: Path) -> list[Path]:
    return sorted((project_root / "sam_precompute" / "train").glob("*/promptset_*"))


def _mtimes(directories) -> dict[Path, int]:
    return {
        d / n: (d / n).stat().st_mtime_ns
        for d in directories
        for n in (*ARRAY_FILES.values(), META_FILE)
    }


def test_tiny_sam_end_to_end(project):
    root, paths, _ = project
    segmenter = CountingSam()
    summary = _run(root, paths, segmenter)
    assert summary["done"] == 3 * N_PROMPTSETS and summary["skipped"] == summary["failed"] == 0
    assert summary["n_images_encoded"] == 3 == segmenter.encoder_calls
    assert summary == read_json(root / "summary.json")
    assert summary["segmenter"]["name"] == "sam" and summary["failures"] == []
    directories = _all_dirs(root)
    assert len(directories) == 3 * N_PROMPTSETS
    # Outputs equal a direct call of the segmenter (stored as float16) and the prompt maps.
    record = read_json(paths[0])
    outputs = read_promptset_outputs(promptset_dir(root / "sam_precompute/train", "cls__a", 1))
    meta, promptset = outputs["meta"], record["promptsets"][1]
    for name in ("logits_256", "pos_map", "neg_map"):
        assert outputs[name].shape == (256, 256) and outputs[name].dtype == np.float16
    segmenter.set_image(np.asarray(Image.open(record["image_path"])))
    points = np.array(promptset["pos_points"] + promptset["neg_points"], dtype=float)
    logits, branch, scores = segmenter.predict(points, [1] * meta["k"] + [0] * meta["k"])
    np.testing.assert_array_equal(outputs["logits_256"], logits.astype(np.float16))
    pos_256 = rescale_points(np.array(promptset["pos_points"]), (40, 56))
    np.testing.assert_array_equal(outputs["pos_map"], gaussian_prompt_map(pos_256, 8.0))
    assert meta["branch_index"] == branch and meta["scores"] == pytest.approx(scores)
    assert meta["score"] == pytest.approx(scores[branch])
    assert meta["pos_points"] == promptset["pos_points"] and meta["k"] == promptset["k"]
    np.testing.assert_allclose(meta["pos_points_256"], pos_256)
    assert meta["image_h"] == 40 and meta["image_w"] == 56 and meta["sigma"] == 8.0
    assert meta["logits_size"] == [256, 256] and meta["dtypes"]["logits_256"] == "float16"
    assert meta["segmenter"] == "sam" and meta["model_type"] == "custom"
    assert "checkpoint_md5" in meta


def test_resume_recomputes_only_what_is_missing(project):
    root, paths, _ = project
    _run(root, paths, CountingSam())
    directories = _all_dirs(root)
    before = _mtimes(directories)
    rerun = CountingSam()
    summary = _run(root, paths, rerun)
    assert summary["skipped"] == 3 * N_PROMPTSETS and summary["done"] == 0
    assert rerun.encoder_calls == 0 and summary["n_images_encoded"] == 0
    assert _mtimes(directories) == before
    # Delete one prompt set's file: only that prompt set (and its image) is recomputed.
    victim = promptset_dir(root / "sam_precompute/train", "cls__b", 2)
    (victim / "pos_map.npy").unlink()
    resumed = CountingSam()
    summary = _run(root, paths, resumed)
    assert (summary["done"], summary["skipped"]) == (1, 3 * N_PROMPTSETS - 1)
    assert resumed.encoder_calls == 1
    after = _mtimes(directories)
    changed = {path for path in before if after[path] != before[path]}
    assert changed == {victim / name for name in (*ARRAY_FILES.values(), META_FILE)}
    # A corrupt (truncated) array is not "complete" either.
    logits_path = promptset_dir(root / "sam_precompute/train", "other__c", 0) / "logits_256.npy"
    logits_path.write_bytes(logits_path.read_bytes()[:200])
    assert _run(root, paths, CountingSam())["done"] == 1


def test_changed_sigma_or_segmenter_recomputes(project):
    root, paths, _ = project
    _run(root, paths, CountingSam())
    assert _run(root, paths, CountingSam(), sigma=4.0)["done"] == 3 * N_PROMPTSETS
    walker = RandomWalkerSegmenter(max_side=32)
    summary = _run(root, paths, walker, sigma=4.0)
    assert summary["done"] == 3 * N_PROMPTSETS
    meta = read_json(_all_dirs(root)[0] / META_FILE)
    assert meta["segmenter"] == "random_walker" and meta["model_type"] is None


def test_corrupt_image_and_missing_prompts_do_not_stop_the_shard(project):
    root, paths, sample_ids = project
    bad_image = Path(read_json(paths[1])["image_path"])
    bad_image.write_bytes(bad_image.read_bytes()[:100])  # valid at validation, broken now
    missing = root / "prompt_sets" / "train" / "ghost__x.json"
    segmenter = CountingSam()
    summary = _run(
        root, [*paths, missing], segmenter, sample_ids=[*sample_ids, "ghost/x"], split="train"
    )
    assert summary["done"] == 2 * N_PROMPTSETS and summary["failed"] == N_PROMPTSETS
    assert summary["samples_failed"] == 2 and summary["n_samples"] == 4
    failures = {f["sample_id"]: f for f in summary["failures"]}
    assert failures["cls/b"]["stage"] == "image" and failures["cls/b"]["promptset_id"] is None
    assert "decode" in failures["cls/b"]["reason"]
    assert (
        failures["ghost/x"]["stage"] == "prompt_json" and "missing" in failures["ghost/x"]["reason"]
    )
    assert read_json(root / "summary.json")["failures"] == summary["failures"]
    assert not (root / "sam_precompute" / "train" / "cls__b").exists()


def test_segmenter_errors_per_sample_and_systemic(project):
    root, paths, _ = project

    class FlakySam(CountingSam):
        def __init__(self, fail_on: set[int]):
            super().__init__()
            self.fail_on, self.calls = fail_on, 0

        def _set_image(self, image_rgb):
            self.calls += 1
            if self.calls in self.fail_on:
                raise RuntimeError("CUDA out of memory (simulated)")
            super()._set_image(image_rgb)

    summary = _run(root, paths, FlakySam({2}))
    assert summary["done"] == 2 * N_PROMPTSETS and summary["failed"] == N_PROMPTSETS
    assert summary["failures"][0]["stage"] == "segmenter"
    assert "out of memory" in summary["failures"][0]["reason"]
    # The two remaining images fail too: systemic, the job fails without a summary.
    (root / "summary.json").unlink()
    for directory in _all_dirs(root):
        (directory / META_FILE).unlink()
    with pytest.raises(LaplaceHeadError, match="failed on all 3 images"):
        _run(root, paths, FlakySam({1, 2, 3}))
    assert not (root / "summary.json").exists()


def test_tracker_gets_counts(project):
    root, paths, _ = project

    class FakeTracker:
        def __init__(self):
            self.logged = []

        def log(self, metrics, step=None):
            self.logged.append(dict(metrics))

    tracker = FakeTracker()
    walker = RandomWalkerSegmenter(max_side=24)
    _run(root, paths, walker, tracker=tracker, log_every=4, write_workers=0)
    assert len(tracker.logged) >= 3
    assert tracker.logged[-1] == {
        "precompute/done": 3 * N_PROMPTSETS,
        "precompute/skipped": 0,
        "precompute/failed": 0,
    }


def test_run_precompute_all_shards_and_script(tmp_path):
    make_project(tmp_path, "train")
    make_project(tmp_path, "val", {"v/one": (20, 30)})
    summaries = run_precompute(
        ProjectLayout(tmp_path),
        ["train", "val"],
        None,
        shard_size=2,
        sigma=6.0,
        segmenter_settings={"backend": "random_walker", "random_walker_max_side": 24},
    )
    assert [(s["split"], s["shard"], s["n_samples"]) for s in summaries] == [
        ("train", "0000", 2),
        ("train", "0001", 1),
        ("val", "0000", 1),
    ]
    for split, shard in [("train", "0000"), ("train", "0001"), ("val", "0000")]:
        assert (
            read_json(ProjectLayout(tmp_path).shard_summary("sam_precompute", split, shard))["done"]
            > 0
        )
    with pytest.raises(LaplaceHeadError, match="shard '0005' does not exist"):
        run_precompute(
            ProjectLayout(tmp_path), ["val"], "0005", 2, 6.0, {"backend": "random_walker"}
        )
    with pytest.raises(LaplaceHeadError, match="build_manifests"):
        run_precompute(
            ProjectLayout(tmp_path), ["test"], "0000", 2, 6.0, {"backend": "random_walker"}
        )
    # The stand-alone command: one shard of one split; everything is already there -> skipped.
    config = {
        "data": {"project_root": str(tmp_path), "shard_size": 2},
        "sam": {"backend": "random_walker", "random_walker_max_side": 24},
        "prompt_generation": {"gaussian_sigma": 6.0},
        "wandb": {"enabled": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    root_logger = logging.getLogger()
    saved = root_logger.handlers[:], root_logger.level
    try:
        cli_main(
            ["precompute-sam", "--config", str(tmp_path / "config.yaml"), "--split", "train"]
            + ["--shard", "1"]
        )
    finally:
        for handler in root_logger.handlers:
            if handler not in saved[0]:
                handler.close()
        root_logger.handlers[:], root_logger.level = saved
    summary = read_json(ProjectLayout(tmp_path).shard_summary("sam_precompute", "train", "0001"))
    assert (summary["skipped"], summary["done"]) == (N_PROMPTSETS, 0)


@pytest.mark.parametrize("write_workers", [0, 2])
def test_non_finite_logits_fail_only_that_promptset(project, write_workers):
    root, paths, _ = project

    class NanOnce(RandomWalkerSegmenter):
        calls = 0

        def _predict(self, points_xy, labels):
            NanOnce.calls += 1
            logits, branch, scores = super()._predict(points_xy, labels)
            return (logits * np.nan if NanOnce.calls == 2 else logits), branch, scores

    summary = _run(root, paths, NanOnce(max_side=24), write_workers=write_workers)
    assert (summary["done"], summary["failed"]) == (3 * N_PROMPTSETS - 1, 1)
    (failure,) = summary["failures"]
    assert failure["stage"] == "output" and failure["promptset_id"] == 1
    assert "non-finite" in failure["reason"]
    assert not (promptset_dir(root / "sam_precompute/train", "cls__a", 1) / META_FILE).exists()


@pytest.mark.parametrize("hostile", ["../../escaped", "..", "cls__b", "a/b", "cls__a\\x"])
def test_safe_id_from_a_prompt_json_cannot_leave_the_output_folder(project, hostile):
    """The output folder is named after the JSON's safe_id: a record whose safe_id is not the
    JSON's own file stem (a path, '..', another sample's id) fails that sample only."""
    root, paths, sample_ids = project
    record = read_json(paths[0])
    record["safe_id"] = hostile
    paths[0].write_text(json.dumps(record))
    summary = _run(root, paths, RandomWalkerSegmenter(max_side=24), sample_ids=sample_ids)
    failures = {f["sample_id"]: f for f in summary["failures"]}
    assert failures[sample_ids[0]]["stage"] == "prompt_json"
    assert "not the file's own name" in failures[sample_ids[0]]["reason"]
    assert summary["done"] == 2 * N_PROMPTSETS  # the other samples are processed
    written = {p.parent.parent.name for p in root.rglob("meta.json")}
    assert written == {"cls__b", "other__c"}  # nothing outside, nothing under a wrong name
    assert not (root.parent / "escaped").exists() and not (root / "escaped").exists()


def test_positive_only_first_click_sets_are_precomputed(project):
    """A first-click prompt set (one positive point, no negative) goes through stage 3."""
    root, paths, sample_ids = project
    record = read_json(paths[0])
    record["promptsets"].append(
        {"promptset_id": N_PROMPTSETS, "k": 1, "pos_points": [[20, 20]], "neg_points": []}
    )
    paths[0].write_text(json.dumps(record))
    summary = _run(root, paths[:1], RandomWalkerSegmenter(max_side=24), sample_ids=sample_ids[:1])
    assert summary["failed"] == 0 and summary["done"] == N_PROMPTSETS + 1
    folder = root / "sam_precompute" / "train" / record["safe_id"] / f"promptset_{N_PROMPTSETS:04d}"
    outputs = read_promptset_outputs(folder)
    assert not outputs["neg_map"].any() and outputs["pos_map"].max() > 0.99
    assert np.isfinite(outputs["logits_256"].astype(np.float32)).all()
    assert outputs["meta"]["neg_points"] == [] and outputs["meta"]["k"] == 1
