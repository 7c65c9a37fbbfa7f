"""Split targets and partial rebuilds (README "Targets and partial rebuilds"): dry-run job lists.

(a) ``split_<split>`` builds stages 1-4.5 of that split only; (b) ``--forcerun pack_hdf5`` with
one split's HDF5 as target re-runs that one job; (c) a new ``training.run_id`` trains on the
existing precomputed data without touching stages 1-4.5.
"""

import re
from pathlib import Path

import pytest

from laplace_head.dataset.demo import write_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow


def _jobs(stdout: str) -> dict[str, int]:
    """The dry run's job-count table, ``{rule: count}``."""
    table = stdout.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def project(tmp_path_factory, config_writer):
    root = tmp_path_factory.mktemp("targets")
    images_root, masks_root = write_demo_dataset(root / "data", per_class=4)
    override = config_writer(
        root / "override.yaml",
        images_root,
        masks_root,
        root / "project",
        data={"shard_size": 2},
        prompt_generation={"num_promptsets_train": 1, "num_promptsets_val": 1,
                           "num_promptsets_test": 1},
    )  # fmt: skip
    base = ["--workflow-profile", "none", "--cores", "2"]
    configs = ["--configfile", str(REPO_ROOT / "config" / "demo.yaml"), str(override)]
    return {"root": root, "base": base, "configs": configs, "override": override}


def test_split_targets_and_partial_rebuilds(project, snakemake_runner) -> None:
    base, configs = project["base"], project["configs"]
    snakemake_runner(["build_manifests", *base, *configs])

    # (a) one split only: no job of another split is planned.
    dry = snakemake_runner(["split_val", "-n", *base, *configs]).stdout
    jobs = _jobs(dry)
    assert jobs["build_training_index"] == 1 and jobs["pack_hdf5"] == 1
    assert jobs["generate_promptsets"] == jobs["precompute_sam"] >= 1
    assert "split=train" not in dry and "split=test" not in dry
    assert "train_head" not in jobs

    snakemake_runner(["split_train", "split_val", *base, *configs])
    assert snakemake_runner(["split_val", "-n", *base, *configs]).stdout.count("Job stats") == 0

    # (b) re-run one stage for one split: exactly that job.
    val_h5 = str(project["root"] / "project" / "training_data" / "no_image" / "val.h5")
    dry = snakemake_runner([val_h5, "-n", "--forcerun", "pack_hdf5", *base, *configs]).stdout
    assert _jobs(dry) == {"pack_hdf5": 1, "total": 1}

    # (c) a new run id on the existing precomputed data: only training.
    new_run = project["root"] / "run_v2.yaml"
    new_run.write_text("training:\n  run_id: v2\n")
    dry = snakemake_runner(["train", "-n", *base, *configs, str(new_run)]).stdout
    assert _jobs(dry) == {"train": 1, "train_head": 1, "total": 2}
    assert "run_v2" in dry
