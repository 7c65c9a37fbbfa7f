"""Hostile inputs through Snakemake (stages 1-2): the run succeeds, every bad sample is a row of
``all_samples.csv`` with its reason, every valid sample gets its prompt sets. The same inputs
without Snakemake: tests/unit/test_manifests.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.hostile_files import EPS_BYTES, encoded, npy_header_only, png_header_only, rgb

from laplace_head.dataset.manifests import read_split_manifest
from laplace_head.dataset.splits import SPLITS

pytestmark = pytest.mark.workflow


def test_empty_images_root_through_the_workflow(
    tmp_path: Path, repo_root: Path, snakemake_runner, config_writer
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    project = tmp_path / "project"
    config = config_writer(tmp_path / "c.yaml", tmp_path / "images", tmp_path / "masks", project)
    args = ["prompt_sets", "--workflow-profile", "none", "--cores", "2", "--configfile"]
    process = snakemake_runner([*args, "config/demo.yaml", str(config)], cwd=repo_root)
    assert "Traceback" not in process.stderr
    assert (project / "manifests" / "train.csv").is_file()
    assert not list((project).glob("prompt_sets/*/*.json"))
    log = (project / "logs" / "build_manifests" / "build_manifests.log").read_text()
    assert "no valid samples" in log


# (sample id, reason prefix) of the bad samples.
WORKFLOW_BAD = {
    "ok/carriage\rreturn": "stem name contains a control character",
    "ok/new\nline": "stem name contains a control character",
    "ok/crlf\r\nboth": "stem name contains a control character",
    "ok/para\u2029separator": "stem name contains a control character",
    "bad\nclass/a": "class name contains a control character",
    f"ok/{'N' * 240}": "name too long",
    "ok/npy_mask_huge_header": "mask too large (decompression-bomb guard)",
    "ok/png_mask_huge_header": "mask too large (decompression-bomb guard)",
    "ok/tiff_named_png": "image fails to decode: file named .png is not a PNG (it is TIFF)",
    "ok/webp_named_jpg": "image fails to decode: file named .jpg is not a JPEG (it is WEBP)",
    "ok/eps_named_png": "image fails to decode: file named .png is not a PNG (it is EPS)",
}


def test_hostile_names_and_files_through_the_workflow(
    tmp_path: Path, repo_root: Path, snakemake_runner, config_writer, data_tools
) -> None:
    """Stages 1-2 through snakemake: the run succeeds, every bad sample is a row of
    all_samples.csv with its reason, every valid sample gets its prompt-set JSON."""
    images, masks = tmp_path / "images_root", tmp_path / "masks_root"
    valid_stems = [f"good_{i:02d}" for i in range(9)] + ['=1+2, "quoted"', "ünï 猫"]
    for index, stem in enumerate(valid_stems):
        data_tools.write_pair(images, masks, "ok", stem, seed=index)
    for index, sample_id in enumerate(WORKFLOW_BAD):
        class_name, stem = sample_id.split("/", 1)
        data_tools.write_pair(images, masks, class_name, stem, seed=100 + index)
    (masks / "ok" / "npy_mask_huge_header.npy").write_bytes(npy_header_only((200_000, 200_000)))
    (masks / "ok" / "png_mask_huge_header.npy").unlink()
    (masks / "ok" / "png_mask_huge_header.png").write_bytes(png_header_only(100_000, 100_000))
    (images / "ok" / "tiff_named_png.png").write_bytes(encoded(rgb(24, 32), "TIFF"))
    (images / "ok" / "webp_named_jpg.png").unlink()
    (images / "ok" / "webp_named_jpg.jpg").write_bytes(encoded(rgb(24, 32), "WEBP"))
    (images / "ok" / "eps_named_png.png").write_bytes(EPS_BYTES)

    project = tmp_path / "project"
    config = config_writer(tmp_path / "c.yaml", images, masks, project, data={"shard_size": 3})
    args = ["prompt_sets", "--workflow-profile", "none", "--cores", "2", "--configfile"]
    process = snakemake_runner([*args, "config/demo.yaml", str(config)], cwd=repo_root)
    assert "Traceback" not in process.stderr

    frame = read_split_manifest(project / "manifests" / "all_samples.csv")
    assert sorted(frame["sample_id"]) == sorted([f"ok/{s}" for s in valid_stems] + [*WORKFLOW_BAD])
    by_id = frame.set_index("sample_id")
    for sample_id, reason in WORKFLOW_BAD.items():
        row = by_id.loc[sample_id]
        assert not row["valid"] and row["reason"].startswith(reason), (sample_id, row["reason"])
        assert row["split"] == ""
    written = 0
    for split in SPLITS:
        rows = read_split_manifest(project / "manifests" / f"{split}.csv")
        for _, row in rows.iterrows():
            record = json.loads(
                (project / "prompt_sets" / split / f"{row['safe_id']}.json").read_text()
            )
            assert record["sample_id"] == row["sample_id"]
            written += 1
        for summary in (project / "prompt_sets" / split / "_shards").glob("shard_*.json"):
            assert json.loads(summary.read_text())["failed"] == 0
    assert written == len(valid_stems) == int(frame["valid"].sum())
