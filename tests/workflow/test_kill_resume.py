"""Kill-and-resume for every stage: a real SIGKILL in the middle of a stage, then the same command.

One uninterrupted reference run (module fixture) builds stages 1-6 on a tiny demo-like dataset
(random_walker backend; one sample's mask has a single foreground pixel) under
``<tmp>/project`` and is copied to ``<tmp>/reference``; Snakemake works in a private
``<tmp>/workdir`` (``--directory``), so other runs in the checkout never touch its locks. Each test
then rebuilds ``<tmp>/project`` from the reference's outputs of the earlier stages (same path, so
absolute paths inside files match), runs Snakemake with the stage killed, checks that Snakemake
failed, runs the same command again (``--rerun-incomplete``, as ``profiles/default`` does) and
checks that

- it completes and leaves no debris: no ``.tmp-*`` file anywhere under ``project_root`` and every
  ``.json/.npy/.h5/.pt/.csv/.yaml/.png`` under it loads (nothing truncated under a final name);
- the outputs equal the reference: byte-identical (sha256) for every file of stages 1-4.5 under
  ``manifests/``, ``prompt_sets/``, ``sam_precompute/`` and ``training_data/``, except the shard
  summaries, which are compared as JSON without their timing keys (and, for the shards the resume
  re-ran, without the counters that record what the resume did: those are checked instead);
  ``torch.equal`` weights for stage 5 and equal Laplace state tensors / posterior meta (timing
  keys aside) for stage 6;
- finished work was not redone: files finished before the kill keep their bytes and ``mtime_ns``;
  the resumed shard summaries skip exactly what was on disk and encode only images with missing
  prompt sets; training resumes after the last finished epoch.

Kills inside a job use :mod:`laplace_head.util.faults` (``LAPLACE_HEAD_KILL_AT``) and, for training,
``LAPLACE_HEAD_KILL_AFTER_STEPS``; stage 6 is killed from outside (SIGKILL to the whole Snakemake
process group, Snakemake included). That the SAM backend encodes each image at most once and not
at all when its prompt sets are complete is shown with a counting tiny SAM in
``tests/unit/test_precompute.py::test_resume_recomputes_only_what_is_missing``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from laplace_head.dataset.demo import make_sample, write_demo_dataset
from laplace_head.dataset.sharding import shard_rows
from laplace_head.dataset.splits import SPLITS
from laplace_head.training.loop import KILL_AFTER_STEPS_ENV
from laplace_head.util.faults import KILL_AT_ENV, PAUSE_AT_ENV

pytestmark = pytest.mark.workflow

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARD_SIZE = 3
STAGE_DIRS = ("manifests", "prompt_sets", "sam_precompute", "training_data")
TIMING_KEYS = {"timing_s", "elapsed_s"}
RESUME_COUNTERS = {"generated", "skipped", "done", "n_images_encoded"}
RUN_DIR = Path("checkpoints", "no_image", "run_v1")
LAPLACE_DIR = Path("laplace", "no_image", "run_v1")
FAULT_ENVS = (KILL_AT_ENV, PAUSE_AT_ENV, KILL_AFTER_STEPS_ENV)
DOT = "dot/dot_000"  # a mask with a single foreground pixel, carried through every stage


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def snakemake(
    ctx: SimpleNamespace,
    targets: list[str],
    env: dict | None = None,
    check: bool = True,
    extra_config: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run snakemake on the test config (plus ``extra_config``); ``env`` adds variables."""
    args = snakemake_command(ctx, targets)
    if extra_config is not None:
        args.append(str(extra_config))  # --configfile is last: one more file
    base = {k: v for k, v in os.environ.items() if k not in FAULT_ENVS}
    process = subprocess.run(
        args,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**base, "WANDB_MODE": "disabled", **(env or {})},
        timeout=600,
    )
    if check and process.returncode != 0:
        pytest.fail(f"snakemake {args} failed:\n{process.stdout[-4000:]}\n{process.stderr[-6000:]}")
    return process


def snakemake_command(ctx: SimpleNamespace, targets: list[str]) -> list[str]:
    """The command line; Snakemake's working directory (its ``.snakemake/`` with locks and
    metadata) is private to this module, so runs of other processes in the checkout never
    touch its locks."""
    return [
        str(Path(sys.executable).parent / "snakemake"),
        *targets,
        *("--directory", str(ctx.workdir)),
        *("--workflow-profile", "none", "--cores", "2", "--rerun-incomplete"),
        *("--configfile", str(REPO_ROOT / "config" / "demo.yaml"), str(ctx.config)),
    ]


def private_workdir(root: Path) -> Path:
    """A Snakemake working directory outside the checkout (``config/`` linked for the
    Snakefile's default ``configfile:``)."""
    workdir = root / "workdir"
    workdir.mkdir()
    (workdir / "config").symlink_to(REPO_ROOT / "config", target_is_directory=True)
    return workdir


def reset_project(ctx: SimpleNamespace, parts: list[str]) -> Path:
    """``<tmp>/project`` holding only the reference's ``parts`` (mtimes kept)."""
    shutil.rmtree(ctx.project, ignore_errors=True)
    ctx.project.mkdir()
    for part in parts:
        source = ctx.reference / part
        if source.is_dir():
            shutil.copytree(source, ctx.project / part, copy_function=shutil.copy2)
        else:
            (ctx.project / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, ctx.project / part)
    return ctx.project


def files_under(root: Path, dirs=STAGE_DIRS) -> list[Path]:
    return sorted(p for d in dirs for p in (root / d).rglob("*") if p.is_file())


def state(root: Path, dirs=STAGE_DIRS) -> dict[Path, tuple[int, str]]:
    """relative path -> (mtime_ns, sha256) of every file under ``dirs``."""
    return {
        p.relative_to(root): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in files_under(root, dirs)
    }


def is_shard_summary(relative: Path) -> bool:
    return relative.parent.name == "_shards" and relative.suffix == ".json"


def comparable(path: Path, relative: Path, resumed: set[Path]) -> str:
    if not is_shard_summary(relative):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    drop = TIMING_KEYS | (RESUME_COUNTERS if relative in resumed else set())
    record = json.loads(path.read_text(encoding="utf-8"))
    return json.dumps({k: v for k, v in record.items() if k not in drop}, sort_keys=True)


def assert_same_as_reference(ctx: SimpleNamespace, dirs, resumed: set[Path] = frozenset()):
    ours = {p.relative_to(ctx.project): p for p in files_under(ctx.project, dirs)}
    theirs = {p.relative_to(ctx.reference): p for p in files_under(ctx.reference, dirs)}
    assert sorted(ours) == sorted(theirs)
    different = [
        str(rel)
        for rel in ours
        if comparable(ours[rel], rel, resumed) != comparable(theirs[rel], rel, resumed)
    ]
    assert not different, f"differ from the uninterrupted run: {different}"


def assert_no_debris(root: Path) -> None:
    """No ``.tmp-*`` leftover and every output file under ``root`` loads completely."""
    leftovers = [str(p) for p in root.rglob(".tmp-*")]
    assert not leftovers, leftovers
    for path in root.rglob("*"):
        if not path.is_file() or "wandb" in path.parts:
            continue
        suffix = path.suffix
        if suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif suffix == ".h5":
            with h5py.File(path, "r") as handle:
                for name in ("logits_256", "pos_map", "neg_map", "gt_mask_256"):
                    handle[name][...]
                assert handle.attrs["n_rows"] == handle["logits_256"].shape[0]
        elif suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=False)
        elif suffix == ".csv" and path.stat().st_size:
            pd.read_csv(path)
        elif suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif suffix == ".png":
            with Image.open(path) as image:
                image.load()


def assert_killed(process: subprocess.CompletedProcess) -> None:
    """Snakemake failed because a job's process died of SIGKILL."""
    output = process.stdout + process.stderr
    assert process.returncode != 0, output[-3000:]
    assert "died with <Signals.SIGKILL: 9>" in output, output[-3000:]


def split_frame(root: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(root / "manifests" / f"{split}.csv", dtype=str, keep_default_na=False)


def shard_of(relative: Path) -> tuple[str, str]:
    """``<stage>/<split>/_shards/shard_NNNN.json`` -> (split, NNNN)."""
    return relative.parts[1], relative.stem.removeprefix("shard_")


def summaries(root: Path, stage: str) -> set[Path]:
    return {p.relative_to(root) for p in root.glob(f"{stage}/*/_shards/shard_*.json")}


# --------------------------------------------------------------------------------------------
# The uninterrupted reference run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("kill_resume")
    images_root, masks_root = write_demo_dataset(root / "data", per_class=4)
    image, _ = make_sample(7, "rectangle")
    dot_mask = np.zeros(image.shape[:2], np.uint8)
    dot_mask[image.shape[0] // 2, image.shape[1] // 3] = 1
    (images_root / "dot").mkdir()
    (masks_root / "dot").mkdir()
    Image.fromarray(image).save(images_root / "dot" / "dot_000.png")
    np.save(masks_root / "dot" / "dot_000.npy", dot_mask)
    config = root / "override.yaml"
    overrides = {
        "data": {
            "images_root": str(images_root),
            "masks_root": str(masks_root),
            "project_root": str(root / "project"),
            "shard_size": SHARD_SIZE,
        },
        "prompt_generation": {
            "num_promptsets_train": 2,
            "num_promptsets_val": 2,
            "num_promptsets_test": 1,
            "max_pairs": 4,
        },
        # CPU even where a GPU is visible: only there is a resumed run equal bit for bit.
        "training": {"num_epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu"},
        "laplace": {  # last-layer diagonal, 3x3 search: the kill tests need its length
            "approx": "diagonal",
            "tuning": "val_nll",
            "prior_precision_grid": [0.01, 1.0, 100.0],
            "temperature_grid": [1.0, 100.0, 10000.0],
            "max_pixels_fit": 50000,
        },
        "wandb": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(overrides))
    ctx = SimpleNamespace(root=root, config=config, project=root / "project")
    ctx.workdir = private_workdir(root)
    ctx.reference = root / "reference"
    start = time.perf_counter()
    snakemake(ctx, [*(str(ctx.project / t) for t in reference_targets())])
    ctx.reference_seconds = time.perf_counter() - start
    shutil.copytree(ctx.project, ctx.reference, copy_function=shutil.copy2)
    return ctx


def reference_targets() -> list[str]:
    return [
        *(f"training_data/no_image/{split}.h5" for split in SPLITS),
        str(LAPLACE_DIR / "posterior_meta.json"),
    ]


def test_reference_run_is_complete(ctx: SimpleNamespace) -> None:
    """The shared reference: stages 1-6 complete, and the one-pixel mask made it through."""
    print(f"reference run (stages 1-6): {ctx.reference_seconds:.1f} s")
    reference = ctx.reference
    assert_no_debris(reference)
    train = split_frame(reference, "train")
    assert DOT in set(train["sample_id"])
    record = json.loads((reference / "prompt_sets" / "train" / "dot__dot_000.json").read_text())
    pixel = np.argwhere(np.load(train.set_index("sample_id").loc[DOT, "mask_path"]))[0]
    for promptset in record["promptsets"]:
        assert promptset["pos_points"] == [[int(pixel[1]), int(pixel[0])]] * promptset["k"]
    with h5py.File(reference / "training_data" / "no_image" / "train.h5", "r") as handle:
        rows = [i for i, s in enumerate(handle["index/sample_id"].asstr()[()]) if s == DOT]
        assert len(rows) == 2
        assert all(handle["gt_mask_256"][row].sum() >= 1 for row in rows)
        assert all(np.isfinite(handle["logits_256"][row]).all() for row in rows)
    assert (reference / LAPLACE_DIR / "laplace_state.pt").is_file()


# --------------------------------------------------------------------------------------------
# Stages 1-4.5: kill at a fault point inside the job, resume, compare bytes
# --------------------------------------------------------------------------------------------


def test_stage1_build_manifests(ctx: SimpleNamespace) -> None:
    """Killed while validating samples (before any manifest is written)."""
    project = reset_project(ctx, [])
    target = [str(project / "manifests" / "all_samples.csv")]
    killed = snakemake(ctx, target, env={KILL_AT_ENV: "build_manifests:5"}, check=False)
    assert_killed(killed)
    assert not list((project / "manifests").glob("*.csv"))  # nothing half-written
    snakemake(ctx, target)
    assert_no_debris(project)
    assert_same_as_reference(ctx, ["manifests"])


def test_ctrl_c_releases_the_lock_and_the_same_command_resumes(ctx: SimpleNamespace) -> None:
    """Ctrl-C (SIGINT to the whole foreground process group) while a job runs: Snakemake stops
    the job, removes the lock and exits; the same command then runs without ``--unlock``."""
    project = reset_project(ctx, [])
    target = [str(project / "manifests" / "all_samples.csv")]
    log = project / "logs" / "build_manifests" / "build_manifests.log"
    env = {k: v for k, v in os.environ.items() if k not in FAULT_ENVS}
    process = subprocess.Popen(
        snakemake_command(ctx, target),
        cwd=REPO_ROOT,
        env={**env, "WANDB_MODE": "disabled", PAUSE_AT_ENV: "build_manifests:2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # Ctrl-C as in a terminal even when the suite itself runs in the background (`make test
        # &` starts it with SIGINT ignored, which Python and snakemake would inherit)
        preexec_fn=_default_sigint,
    )
    try:
        job = wait_for_pause(process, log)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(1.0)
        os.kill(job, signal.SIGCONT)  # the job wakes up to its pending SIGINT
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert "Terminating processes on user request" in output, output[-3000:]
    assert not list((project / "manifests").glob("*.csv"))
    snakemake(ctx, target)  # no "Directory cannot be locked": the lock was released
    assert_no_debris(project)
    assert_same_as_reference(ctx, ["manifests"])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_pause(process: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    """The pid of the job that stopped itself at a ``LAPLACE_HEAD_PAUSE_AT`` point."""
    deadline = time.monotonic() + timeout
    while not (match := re.search(r"stopped pid (\d+)", log.read_text() if log.exists() else "")):
        assert process.poll() is None, "snakemake ended before the pause point"
        assert time.monotonic() < deadline, "the pause point was never reached"
        time.sleep(0.05)
    return int(match.group(1))


def test_stage2_generate_promptsets(ctx: SimpleNamespace) -> None:
    """Killed after the 2nd JSON of every shard job that has >= 2 samples."""
    project = reset_project(ctx, ["manifests"])
    killed = snakemake(
        ctx, ["prompt_sets"], env={KILL_AT_ENV: "generate_promptsets:2"}, check=False
    )
    assert_killed(killed)
    at_kill = state(project, ["prompt_sets"])
    jsons_at_kill = {p.name for p in at_kill if not is_shard_summary(p)}
    assert jsons_at_kill, "the kill came before any JSON was written"
    expected = set(summaries(ctx.reference, "prompt_sets"))
    resumed = expected - summaries(project, "prompt_sets")
    assert resumed, "no shard job was killed"
    snakemake(ctx, ["prompt_sets"])
    assert_no_debris(project)
    assert_same_as_reference(ctx, ["manifests", "prompt_sets"], resumed)
    after = state(project, ["prompt_sets"])
    for path, before in at_kill.items():
        assert after[path] == before, f"{path} was rewritten"
    for relative in resumed:
        split, shard = shard_of(relative)
        ids = shard_rows(split_frame(project, split), shard, SHARD_SIZE)["safe_id"]
        on_disk = sum(f"{safe_id}.json" in jsons_at_kill for safe_id in ids)
        summary = json.loads((project / relative).read_text())
        assert (summary["skipped"], summary["generated"]) == (on_disk, len(ids) - on_disk)


def test_stage3_precompute_sam(ctx: SimpleNamespace) -> None:
    """Killed after the 3rd prompt set written by every shard job (write threads in flight)."""
    project = reset_project(ctx, ["manifests", "prompt_sets"])
    killed = snakemake(ctx, ["sam_precompute"], env={KILL_AT_ENV: "precompute_sam:3"}, check=False)
    assert_killed(killed)
    at_kill = state(project, ["sam_precompute"])
    complete = {p.parent for p in at_kill if p.name == "meta.json"}  # meta.json is written last
    assert complete, "the kill came before any prompt set was complete"
    resumed = summaries(ctx.reference, "sam_precompute") - summaries(project, "sam_precompute")
    assert resumed, "no shard job was killed"
    snakemake(ctx, ["sam_precompute"])
    assert_no_debris(project)
    assert_same_as_reference(ctx, ["manifests", "prompt_sets", "sam_precompute"], resumed)
    after = state(project, ["sam_precompute"])
    for path, before in at_kill.items():
        if path.parent in complete:
            assert after[path] == before, f"{path} was rewritten"
    for relative in resumed:
        split, shard = shard_of(relative)
        summary = json.loads((project / relative).read_text())
        n_sets = summary["n_promptsets"] // summary["n_samples"]
        done_here, images_needed = 0, 0
        for safe_id in shard_rows(split_frame(project, split), shard, SHARD_SIZE)["safe_id"]:
            dirs = [
                Path("sam_precompute", split, safe_id, f"promptset_{i:04d}") for i in range(n_sets)
            ]
            n_complete = sum(d in complete for d in dirs)
            done_here += n_complete
            images_needed += n_complete < n_sets
        assert summary["skipped"] == done_here
        assert summary["done"] == summary["n_promptsets"] - done_here
        assert summary["n_images_encoded"] == images_needed  # finished images not re-read


def test_stage4_build_training_index(ctx: SimpleNamespace) -> None:
    """Killed after indexing the 2nd sample of each split; upstream stages are not re-run."""
    project = reset_project(ctx, ["manifests", "prompt_sets", "sam_precompute"])
    upstream = state(project, ["manifests", "prompt_sets", "sam_precompute"])
    targets = [str(project / f"training_data/no_image/{s}_index.csv") for s in SPLITS]
    killed = snakemake(ctx, targets, env={KILL_AT_ENV: "build_training_index:2"}, check=False)
    assert_killed(killed)
    assert not list(project.glob("training_data/no_image/*.csv"))
    snakemake(ctx, targets)
    assert_no_debris(project)
    assert state(project, ["manifests", "prompt_sets", "sam_precompute"]) == upstream
    ours = sorted(p.name for p in project.glob("training_data/no_image/*"))
    assert ours == sorted(f"{s}_{kind}.csv" for s in SPLITS for kind in ("index", "failures"))
    for name in ours:
        relative = Path("training_data", "no_image", name)
        assert (project / relative).read_bytes() == (ctx.reference / relative).read_bytes()


def test_stage45_pack_hdf5(ctx: SimpleNamespace) -> None:
    """Killed after the 4th row copied into the temporary HDF5 (test has only 3 rows)."""
    csvs = [f"training_data/no_image/{s}_{k}.csv" for s in SPLITS for k in ("index", "failures")]
    project = reset_project(ctx, ["manifests", "prompt_sets", "sam_precompute", *csvs])
    targets = [str(project / f"training_data/no_image/{s}.h5") for s in SPLITS]
    killed = snakemake(ctx, targets, env={KILL_AT_ENV: "pack_hdf5:4"}, check=False)
    assert_killed(killed)
    partial = list(project.glob("training_data/no_image/.tmp-*.h5"))
    assert partial, "the kill left no half-written temporary HDF5 file"
    for tmp in partial:
        final = tmp.name.removeprefix(".tmp-").split(".h5.")[0] + ".h5"
        assert not (tmp.parent / final).exists(), "a half-written HDF5 under its final name"
    snakemake(ctx, targets)
    assert_no_debris(project)
    assert_same_as_reference(ctx, STAGE_DIRS)
    for split in {tmp.name.removeprefix(".tmp-").split(".h5.")[0] for tmp in partial}:
        log = (project / "logs" / "pack_hdf5" / f"{split}.log").read_text()
        assert "removed 1 leftover temporary file(s)" in log


# --------------------------------------------------------------------------------------------
# Stage 5: training killed mid-epoch; Stage 6: the whole Snakemake process group killed
# --------------------------------------------------------------------------------------------


def test_stage5_train_head(ctx: SimpleNamespace) -> None:
    """16 train rows, batch 4: the kill after optimiser step 6 lands in the middle of epoch 2."""
    project = reset_project(ctx, list(STAGE_DIRS))
    killed = snakemake(ctx, ["train"], env={KILL_AFTER_STEPS_ENV: "6"}, check=False)
    assert_killed(killed)
    run_dir = project / RUN_DIR
    assert json.loads((run_dir / "epoch_state.json").read_text())["epoch"] == 1
    assert not (run_dir / "training_summary.json").exists()
    log_path = project / "logs" / "train_head" / "run_v1.log"
    killed_log = log_path.read_text()  # Snakemake deletes a job's old log when it re-runs it
    assert killed_log.count("epoch 1/2:") == 1 and "epoch 2/2:" not in killed_log
    snakemake(ctx, ["train"])
    assert_no_debris(project)
    log = log_path.read_text()
    assert "resuming run v1 after epoch 1" in log
    # Epoch 1 was not trained again; only epoch 2 (interrupted) was.
    assert "epoch 1/2:" not in log and log.count("epoch 2/2:") == 1
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    for name in ("best.pt", "last.pt"):
        expected = torch.load(ctx.reference / RUN_DIR / name, weights_only=False)
        got = torch.load(run_dir / name, weights_only=False)
        assert got["epoch"] == expected["epoch"] and got["metrics"] == expected["metrics"]
        assert got["model_state"].keys() == expected["model_state"].keys()
        for key, value in expected["model_state"].items():
            assert torch.equal(got["model_state"][key], value), (name, key)


def assert_nested_equal(got, expected, where: str = "") -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_nested_equal(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_nested_equal(a, b, f"{where}[{i}]")
    else:
        assert got == expected, where


def test_stage6_fit_laplace_killed_from_outside(ctx: SimpleNamespace) -> None:
    """SIGKILL to Snakemake's whole process group while fit_laplace runs: Snakemake's lock is
    left behind (it never got to clean up), so the rerun needs ``--unlock`` first; then it
    completes with the same posterior."""
    project = reset_project(ctx, [*STAGE_DIRS, "checkpoints"])
    target = [str(project / LAPLACE_DIR / "posterior_meta.json")]
    log = project / "logs" / "fit_laplace" / "run_v1.log"
    env = {k: v for k, v in os.environ.items() if k not in FAULT_ENVS}
    process = subprocess.Popen(
        snakemake_command(ctx, target),
        cwd=REPO_ROOT,
        env={**env, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while " GGN of " not in (log.read_text() if log.is_file() else ""):
            assert process.poll() is None, "snakemake ended before fit_laplace started"
            assert time.monotonic() < deadline, "fit_laplace did not start"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (project / LAPLACE_DIR / "posterior_meta.json").exists(), "killed too late"
    refused = snakemake(ctx, target, check=False)
    assert refused.returncode != 0
    assert "Directory cannot be locked" in refused.stdout + refused.stderr
    snakemake(ctx, [*target, "--unlock"])
    snakemake(ctx, target)
    assert_no_debris(project)
    expected = json.loads((ctx.reference / LAPLACE_DIR / "posterior_meta.json").read_text())
    got = json.loads((project / LAPLACE_DIR / "posterior_meta.json").read_text())
    timing = [key for key in expected if key.endswith("_time_s")]
    for key in timing:
        expected.pop(key), got.pop(key)
    assert got == expected
    assert (got["prior_precision"], got["temperature"]) == (
        expected["prior_precision"],
        expected["temperature"],
    )
    assert_nested_equal(
        torch.load(project / LAPLACE_DIR / "laplace_state.pt", weights_only=False),
        torch.load(ctx.reference / LAPLACE_DIR / "laplace_state.pt", weights_only=False),
    )


def test_regenerating_a_prompt_json_reuses_the_fit(ctx: SimpleNamespace) -> None:
    """The README's recipe (delete one prompt JSON, ``--forcerun generate_promptsets --until
    generate_promptsets``) re-runs the downstream jobs by mtime; training resumes its finished
    run and fit_laplace, whose outputs Snakemake deletes first, restores the same posterior from
    ``.reuse/`` instead of refitting."""
    project = reset_project(ctx, [*STAGE_DIRS, "checkpoints", "laplace"])
    target = [str(project / LAPLACE_DIR / "posterior_meta.json")]
    snakemake(ctx, target)
    best = project / "checkpoints" / "no_image" / "run_v1" / "best.pt"
    best_bytes = best.read_bytes()
    victim = sorted((project / "prompt_sets" / "train").glob("*.json"))[0]
    victim_bytes = victim.read_bytes()
    victim.unlink()
    snakemake(ctx, ["--forcerun", "generate_promptsets", "--until", "generate_promptsets"])
    assert victim.read_bytes() == victim_bytes
    log = project / "logs" / "fit_laplace" / "run_v1.log"
    log.unlink(missing_ok=True)
    snakemake(ctx, target)
    text = log.read_text()
    assert "restored the fit" in text and " GGN of " not in text, text
    assert best.read_bytes() == best_bytes
    expected = json.loads((ctx.reference / LAPLACE_DIR / "posterior_meta.json").read_text())
    got = json.loads((project / LAPLACE_DIR / "posterior_meta.json").read_text())
    for key in [key for key in expected if key.endswith("_time_s")]:
        expected.pop(key), got.pop(key)
    assert got == expected


# --------------------------------------------------------------------------------------------
# A config change between runs
# --------------------------------------------------------------------------------------------


def test_config_change_reruns_exactly_the_affected_stage(ctx: SimpleNamespace) -> None:
    """A setting that changes stage-3 outputs (the random_walker beta) re-runs every
    precompute shard job (which then recomputes the stale prompt sets: see
    ``tests/test_precompute.py::test_changed_sigma_or_segmenter_recomputes``); settings the
    outputs do not depend on (the SAM checkpoint while the backend is random_walker, the
    device) re-run nothing. Dry runs on the reference outputs."""
    reset_project(ctx, ["manifests", "prompt_sets", "sam_precompute"])
    irrelevant = ctx.root / "irrelevant.yaml"
    irrelevant.write_text(
        yaml.safe_dump({"sam": {"checkpoint": "/elsewhere.pth", "device": "auto"}})
    )
    process = snakemake(ctx, ["sam_precompute", "-n"], extra_config=irrelevant)
    assert "Nothing to be done" in process.stdout + process.stderr
    relevant = ctx.root / "relevant.yaml"
    relevant.write_text(yaml.safe_dump({"sam": {"random_walker_beta": 500}}))
    output = snakemake(ctx, ["sam_precompute", "-n"], extra_config=relevant).stdout
    n_shards = len(summaries(ctx.reference, "sam_precompute"))
    assert output.count("Params have changed since last execution") == n_shards
    assert re.search(rf"^precompute_sam\s+{n_shards}\s*$", output, re.MULTILINE), output
    assert not re.search(r"^(build_manifests|generate_promptsets)\s+\d", output, re.MULTILINE)
