"""Concurrent runs: Snakemake's lock refuses a second run on the same outputs; shard jobs running
side by side write disjoint files; every job has its own log and summary.

The first run is held in the middle of its ``build_manifests`` job with
``LAPLACE_HEAD_PAUSE_AT`` (:mod:`laplace_head.util.faults`: the job stops itself with SIGSTOP and is
resumed with SIGCONT), so the second run meets a lock that is really held.

Snakemake keeps its locks in the working directory (``.snakemake/locks``) and locks files, not
folders: a second run from the same working directory that would write any of the same files
is refused; a run on another ``project_root`` is not. A run from *another* working directory
(a second checkout) on the same ``project_root`` is refused by the project's own lock
(:mod:`laplace_head.util.project_lock`), which a dry-run does not take. The
static side of "shards never share a file" (every sample in exactly one shard, for many shard
sizes) is ``tests/test_promptsets.py::test_sharding_assignment_is_stable_and_complete``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from laplace_head.dataset.sharding import shard_names, shard_rows
from laplace_head.dataset.splits import SPLITS
from laplace_head.util.faults import KILL_AT_ENV, PAUSE_AT_ENV

pytestmark = pytest.mark.workflow

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_PROMPTSETS = {"train": 2, "val": 1, "test": 1}


def _args(targets: list[str], config: Path) -> list[str]:
    """Snakemake's working directory (where its locks live) is private to each test: a run of
    another process in the checkout can never add or remove a lock these tests look at."""
    workdir = config.parent / "workdir"
    if not workdir.is_dir():
        workdir.mkdir()
        (workdir / "config").symlink_to(REPO_ROOT / "config", target_is_directory=True)
    return [
        str(Path(sys.executable).parent / "snakemake"),
        *targets,
        *("--directory", str(workdir)),
        *("--workflow-profile", "none", "--cores", "2", "--rerun-incomplete"),
        *("--configfile", str(REPO_ROOT / "config" / "demo.yaml"), str(config)),
    ]


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in (KILL_AT_ENV, PAUSE_AT_ENV)}
    return {**clean, "WANDB_MODE": "disabled", **extra}


def _run(targets: list[str], config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _args(targets, config), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True
    )


def _config(config_writer, root: Path, name: str, images: Path, masks: Path, **data) -> Path:
    return config_writer(
        root / f"{name}.yaml",
        images,
        masks,
        root / name,
        data=data,
        prompt_generation={f"num_promptsets_{s}": n for s, n in NUM_PROMPTSETS.items()},
    )


def _start_paused(targets: list[str], config: Path) -> subprocess.Popen:
    """A run whose build_manifests job stops itself (SIGSTOP) at its second fault point."""
    return subprocess.Popen(
        _args(targets, config),
        cwd=REPO_ROOT,
        env=_env(**{PAUSE_AT_ENV: "build_manifests:2"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _paused_job(first: subprocess.Popen, log: Path) -> int:
    """The pid of the first run's job, once it has stopped at its pause point."""
    deadline = time.monotonic() + 300
    while not (match := re.search(r"stopped pid (\d+)", log.read_text() if log.exists() else "")):
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "the first run never reached its pause point"
        time.sleep(0.1)
    return int(match.group(1))


def test_second_run_on_the_same_project_is_refused_by_the_lock(
    tmp_path: Path, data_tools, config_writer
) -> None:
    images, masks = data_tools.make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    config = _config(config_writer, tmp_path, "project", images, masks)
    other = _config(config_writer, tmp_path, "other_project", images, masks)
    target = [str(tmp_path / "project" / "manifests" / "all_samples.csv")]
    log = tmp_path / "project" / "logs" / "build_manifests" / "build_manifests.log"
    first = _start_paused(target, config)
    try:
        paused_job = _paused_job(first, log)

        second = _run(target, config)  # the same command, while the first one holds the lock
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "LockException" in output and "Directory cannot be locked" in output, output
        assert "--unlock" in output  # the message names the way out for a stale lock
        assert "Traceback" not in output

        # A run on another project_root in the same checkout shares no file: not refused.
        beside = _run([str(tmp_path / "other_project" / "manifests" / "all_samples.csv")], other)
        assert beside.returncode == 0, beside.stderr[-4000:]

        os.kill(paused_job, signal.SIGCONT)
        stdout, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, stdout[-4000:]  # the refused run did not disturb the first
    for project in ("project", "other_project"):
        frame = pd.read_csv(tmp_path / project / "manifests" / "all_samples.csv")
        assert len(frame) == 6 and frame["valid"].all()
    after = _run(target, config)  # the lock was released when the first run ended
    assert after.returncode == 0 and "Nothing to be done" in after.stdout + after.stderr


def test_a_second_checkout_on_the_same_project_is_refused_by_the_project_lock(
    tmp_path: Path, data_tools, config_writer
) -> None:
    images, masks = data_tools.make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    config = _config(config_writer, tmp_path, "project", images, masks)
    second_checkout = tmp_path / "second"
    second_checkout.mkdir()
    other_config = second_checkout / config.name  # the same settings, another working directory
    other_config.write_text(config.read_text())
    target = [str(tmp_path / "project" / "manifests" / "all_samples.csv")]
    log = tmp_path / "project" / "logs" / "build_manifests" / "build_manifests.log"
    lock = tmp_path / "project" / "laplace_head.lock"
    first = _start_paused(target, config)
    try:
        paused_job = _paused_job(first, log)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid  # the main snakemake process, not its job
        dry = _run([*target, "-n"], other_config)  # a dry-run takes no lock
        assert dry.returncode == 0, dry.stderr[-4000:]

        second = _run(target, other_config)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "another run works on this project folder" in output, output[-4000:]
        assert f"pid {first.pid}" in output and holder["cwd"] in output
        assert "Traceback" not in output
        assert json.loads(lock.read_text()) == holder  # the refused run left it alone
        assert not list((second_checkout / "workdir" / ".snakemake" / "locks").glob("*"))

        os.kill(paused_job, signal.SIGCONT)
        stdout, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, stdout[-4000:]  # the refused run did not disturb the first
    assert not lock.exists()  # given back when the run ended
    frame = pd.read_csv(tmp_path / "project" / "manifests" / "all_samples.csv")
    assert len(frame) == 6 and frame["valid"].all()


def test_parallel_shard_jobs_write_disjoint_files_and_own_logs(
    tmp_path: Path, data_tools, config_writer
) -> None:
    """shard_size 1 and --cores 2: two one-sample shard jobs run at a time (stages 2 and 3)."""
    images, masks = data_tools.make_dataset(tmp_path / "data", {"a": 4, "b": 4})
    config = _config(config_writer, tmp_path, "project", images, masks, shard_size=1)
    project = tmp_path / "project"
    process = _run(["sam_precompute"], config)
    assert process.returncode == 0, process.stderr[-4000:]

    for split in SPLITS:
        frame = pd.read_csv(project / "manifests" / f"{split}.csv", dtype=str)
        assert frame["safe_id"].is_unique  # output paths are keyed by (split, safe_id)
        shards = shard_names(len(frame), 1)
        owner: dict[str, str] = {}
        for shard in shards:
            (safe_id,) = shard_rows(frame, shard, 1)["safe_id"]
            owner[safe_id] = shard
        assert sorted(owner) == sorted(frame["safe_id"])  # every sample in exactly one shard

        prompt_summaries = sorted((project / "prompt_sets" / split / "_shards").glob("*.json"))
        sam_summaries = sorted((project / "sam_precompute" / split / "_shards").glob("*.json"))
        assert [p.stem for p in prompt_summaries] == [f"shard_{s}" for s in shards]
        assert [p.stem for p in sam_summaries] == [f"shard_{s}" for s in shards]
        written = []
        for path in prompt_summaries:
            summary = json.loads(path.read_text())
            assert (summary["generated"], summary["skipped"]) == (1, 0), path
        for path in sam_summaries:
            summary = json.loads(path.read_text())
            # Nothing was found already written (skipped) by a neighbour, nothing written twice.
            assert summary["skipped"] == 0 and summary["done"] == NUM_PROMPTSETS[split], path
            written.append(summary["done"])
        metas = list((project / "sam_precompute" / split).glob("*/promptset_*/meta.json"))
        assert sum(written) == len(metas) == NUM_PROMPTSETS[split] * len(frame)
        for meta_path in metas:  # each prompt set is owned by its sample's one shard
            assert json.loads(meta_path.read_text())["safe_id"] in owner

        for rule, summaries in (
            ("generate_promptsets", prompt_summaries),
            ("precompute_sam", sam_summaries),
        ):
            logs = sorted((project / "logs" / rule / split).glob("*.log"))
            assert [p.stem for p in logs] == [p.stem for p in summaries]  # one log per job
            finals = {
                "generate_promptsets": rf"split {split}: generated \d+, skipped \d+, failed \d+",
                "precompute_sam": rf"precompute {split} (\d{{4}}): \d+ done, \d+ skipped",
            }[rule]
            for log in logs:
                found = re.findall(finals, log.read_text())
                assert len(found) == 1, log  # one job, one run wrote this log
                if rule == "precompute_sam":
                    assert f"shard_{found[0]}" == log.stem  # ... and it was this shard's job
    assert not list(project.rglob(".tmp-*"))
