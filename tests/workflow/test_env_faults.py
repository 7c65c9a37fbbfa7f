"""Configuration and environment faults: a missing SAM checkpoint, CUDA without a GPU, an
unwritable ``project_root`` and a disk that fills up in the middle of a write.

Each must end in one clear message (``ERROR: ...`` from a job, or ``Configuration error: ...``
before any job), never a traceback, and leave nothing half-written under a final name. Schema
violations (one message naming the key) are covered by ``tests/test_config.py``.

What "unwritable" means here (tests run as root in CI, where ``chmod 555`` does not stop
writes): ``project_root`` below a regular file (cannot be created, any user), and a read-only
folder - a read-only bind mount when running as root (skipped, with the reason, when mounting
is not permitted), ``chmod 555`` otherwise. The full disk is a real 1 MiB tmpfs when mounting
is permitted (root), and always a patched writer that fails with ENOSPC half-way through a file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from laplace_head.cache.precompute import precompute_shard
from laplace_head.errors import LaplaceHeadError
from laplace_head.segmenters import build_segmenter_from_settings
from laplace_head.training.loop import TrainingSettings, train_head
from laplace_head.util.console import run_user_facing

pytestmark = pytest.mark.workflow

NUM_PROMPTSETS = {f"num_promptsets_{split}": 1 for split in ("train", "val", "test")}


def _snakemake(runner, targets: list[str], *configs: Path) -> subprocess.CompletedProcess:
    args = [*targets, "--workflow-profile", "none", "--cores", "2", "--rerun-incomplete"]
    return runner([*args, "--configfile", "config/demo.yaml", *map(str, configs)], check=False)


def _files(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _assert_nothing_half_written(root: Path) -> None:
    assert not list(root.rglob(".tmp-*"))
    for path in root.rglob("*.npy"):
        assert np.load(path, allow_pickle=False).shape == (256, 256), path
    for path in root.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


def _clean_failure(process: subprocess.CompletedProcess, full_disk: bool = False) -> str:
    """The output of a failed run; no traceback (on a full disk Python's logging may still
    print ``--- Logging error ---`` with one when the log file itself cannot grow)."""
    output = process.stdout + process.stderr
    assert process.returncode != 0, output[-3000:]
    tracebacks = output.count("Traceback")
    allowed = output.count("--- Logging error ---\nTraceback") if full_disk else 0
    assert tracebacks == allowed, output[-6000:]
    return output


@pytest.fixture(scope="module")
def stage12(tmp_path_factory, data_tools, snakemake_runner, config_writer) -> SimpleNamespace:
    """A tiny project with stages 1-2 done (random_walker config)."""
    root = tmp_path_factory.mktemp("env_faults")
    images_root, masks_root = data_tools.make_dataset(root / "data", {"a": 3, "b": 3})
    project = root / "project"
    config = config_writer(
        root / "base.yaml",
        images_root,
        masks_root,
        project,
        data={"shard_size": 8},
        prompt_generation=NUM_PROMPTSETS,
    )
    process = _snakemake(snakemake_runner, ["prompt_sets"], config)
    assert process.returncode == 0, process.stderr[-4000:]
    return SimpleNamespace(
        root=root, images_root=images_root, masks_root=masks_root, project=project, config=config
    )


# --- the base segmenter ---------------------------------------------------------------------


def test_missing_sam_checkpoint_fails_before_any_image(stage12, snakemake_runner, config_writer):
    missing = stage12.root / "missing" / "sam_vit_b.pth"
    sam = config_writer(
        stage12.root / "sam_missing.yaml",
        stage12.images_root,
        stage12.masks_root,
        stage12.project,
        sam={"backend": "sam", "checkpoint": str(missing), "model_type": "vit_b", "device": "cpu"},
    )
    before = _files(stage12.project / "prompt_sets")
    output = _clean_failure(_snakemake(snakemake_runner, ["sam_precompute"], stage12.config, sam))
    assert str(missing) in output and "sam.checkpoint" in output and "does not exist" in output
    assert not [p for p in (stage12.project / "sam_precompute").rglob("*") if p.is_file()]
    assert _files(stage12.project / "prompt_sets") == before  # stages 1-2 untouched
    for log in (stage12.project / "logs" / "precompute_sam").rglob("*.log"):
        text = log.read_text()
        assert "does not exist" in text and "precompute:" not in text  # no image was processed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: 'cuda' is valid here")
def test_sam_device_cuda_without_gpu(stage12, snakemake_runner, config_writer):
    checkpoint = stage12.root / "any.pth"
    checkpoint.write_bytes(b"the device is checked before the checkpoint is read")
    cuda = config_writer(
        stage12.root / "sam_cuda.yaml",
        stage12.images_root,
        stage12.masks_root,
        stage12.project,
        sam={"backend": "sam", "checkpoint": str(checkpoint), "device": "cuda"},
    )
    output = _clean_failure(_snakemake(snakemake_runner, ["sam_precompute"], stage12.config, cuda))
    assert "ERROR: sam.device = 'cuda' but no CUDA GPU is available" in output
    assert not [p for p in (stage12.project / "sam_precompute").rglob("*") if p.is_file()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: 'cuda' is valid here")
def test_training_device_cuda_without_gpu(tmp_path: Path) -> None:
    from helpers.synthetic_h5 import make_synthetic_h5

    make_synthetic_h5(tmp_path / "train.h5", 4, seed=1)
    make_synthetic_h5(tmp_path / "val.h5", 2, seed=2, split="val")
    config = {"training": {"device": "cuda", "num_workers": 0}, "head": {}}
    from laplace_head.config import validate_config
    from laplace_head.settings import Runtime, stage_params

    config = validate_config(config, check_paths=False)
    settings = TrainingSettings.from_params(
        stage_params(config)["train_head"], Runtime.from_config(config)
    )
    run_dir = tmp_path / "run_t"
    with pytest.raises(LaplaceHeadError, match="training.device = 'cuda' but no CUDA GPU"):
        train_head(tmp_path / "train.h5", tmp_path / "val.h5", run_dir, settings, "t")
    assert not run_dir.exists() or not any(run_dir.iterdir())


# --- project_root -------------------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An existing folder this process cannot write in (see the module docstring)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = _run(["mount", "--bind", str(folder), str(folder)])
    if not mounted or not _run(["mount", "-o", "remount,ro,bind", str(folder)]):
        if mounted:
            _run(["umount", str(folder)])
        pytest.skip("root without permission to mount: cannot make a folder read-only for root")
    try:
        yield folder
    finally:
        _run(["umount", str(folder)])


def _run(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("where", ["below_a_file", "read_only"])
def test_unwritable_project_root_stops_before_any_job(
    where, request, stage12, tmp_path, snakemake_runner, config_writer
):
    if where == "below_a_file":
        parent = tmp_path / "a_file"
        parent.write_text("not a folder")
        expected = f"cannot be created: {str(parent)!r} is a file"
    else:
        parent = request.getfixturevalue("read_only_folder")
        expected = "is not writable"
    project = parent / "project"
    config = config_writer(
        tmp_path / "c.yaml", stage12.images_root, stage12.masks_root, project, data={}
    )
    output = _clean_failure(_snakemake(snakemake_runner, ["prompt_sets"], config))
    assert "Configuration error:" in output and str(config) in output
    assert f"data.project_root = {str(project)!r}" in output and expected in output
    assert "Building DAG" not in output  # stopped while parsing, before any job was planned
    assert not project.exists()


# --- a full disk ----------------------------------------------------------------------------


def test_disk_full_mid_write_leaves_no_partial_file(stage12, tmp_path, monkeypatch, capsys):
    """The writer fails with ENOSPC half-way through the 5th file (the 2nd prompt set; writes
    inline so the order is fixed - the workflow's writer threads are used in the tmpfs test)."""
    frame = pd.read_csv(stage12.project / "manifests" / "train.csv", dtype=str)
    jsons = [stage12.project / "prompt_sets" / "train" / f"{s}.json" for s in frame["safe_id"]]
    out_dir, summary = tmp_path / "sam_precompute" / "train", tmp_path / "shard_0000.json"
    segmenter = build_segmenter_from_settings("random_walker", random_walker_max_side=32)
    original = Path.write_bytes
    calls = []

    def disk_fills_up(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 5:
            with open(self, "wb") as handle:
                handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_fills_up)
    with pytest.raises(SystemExit) as exit_info:
        run_user_facing(
            lambda: precompute_shard(jsons, out_dir, segmenter, 8.0, summary, write_workers=0)
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR: [Errno 28] No space left on device. Free disk space and run the same" in err
    assert calls[4].name.startswith(".tmp-")  # the failing write went to a temporary name
    assert not summary.exists()
    _assert_nothing_half_written(tmp_path)
    complete = {meta.parent for meta in out_dir.rglob("meta.json")}
    assert len(complete) == 1
    monkeypatch.undo()
    resumed = precompute_shard(jsons, out_dir, segmenter, 8.0, summary)
    assert (resumed["skipped"], resumed["done"], resumed["failed"]) == (1, len(jsons) - 1, 0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only; skipped with the reason elsewhere)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or not _run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]
    ):
        pytest.skip("mounting a tmpfs needs root with mount permission (patched-writer test ran)")
    try:
        yield mount_point
    finally:
        _run(["umount", str(mount_point)])


def test_disk_full_in_the_workflow_then_resume(
    stage12, small_disk, snakemake_runner, config_writer
):
    """Stages 1-2 fit on the 1 MiB disk, stage 3 (3 x 128 KiB per prompt set) does not."""
    project = small_disk / "project"
    config = config_writer(
        small_disk.parent / "small.yaml",
        stage12.images_root,
        stage12.masks_root,
        project,
        data={"shard_size": 8},
        prompt_generation=NUM_PROMPTSETS,
    )
    failed = _snakemake(snakemake_runner, ["sam_precompute"], config)
    output = _clean_failure(failed, full_disk=True)
    assert "ERROR: [Errno 28] No space left on device. Free disk space" in output
    _assert_nothing_half_written(project)
    at_failure = _files(project / "sam_precompute")
    finished = {p.parts[-3] for p in project.glob("sam_precompute/*/_shards/*.json")}
    failed_splits = {"train", "val", "test"} - finished  # one shard per split here
    assert failed_splits, "every shard finished: the disk did not fill up"
    complete = {meta.parent for meta in at_failure if meta.name == "meta.json"}
    resumed_complete = {d for d in complete if d.parts[-3] in failed_splits}
    assert _run(["mount", "-o", "remount,size=64m", str(small_disk)])  # space freed
    process = _snakemake(snakemake_runner, ["sam_precompute"], config)
    assert process.returncode == 0, process.stderr[-4000:]
    _assert_nothing_half_written(project)
    after = _files(project / "sam_precompute")
    for path, state in at_failure.items():
        if path.parent in complete:
            assert after[path] == state, f"{path} was recomputed"
    summaries = [json.loads(p.read_text()) for p in project.glob("sam_precompute/*/_shards/*")]
    assert sum(s["skipped"] for s in summaries) == len(resumed_complete)
    assert sum(s["failed"] for s in summaries) == 0
    shutil.rmtree(project)
