"""The whole workflow on the real_dev data (92 real photographs, random_walker, CPU): slow.

Run with ``pytest -m slow tests/workflow/test_real_dev_end_to_end.py`` (minutes on 2 cores) or
``make real-dev`` (the same settings, ``config/real_dev.yaml``, outputs in real_dev_project/).
Here the outputs go to a temporary ``project_root``; the metrics table is printed (``-s``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def test_whole_pipeline_on_real_dev(
    tmp_path: Path, repo_root: Path, real_dev_root: Path, snakemake_runner, config_writer
) -> None:
    project = tmp_path / "project"
    config = config_writer(
        tmp_path / "real_dev.yaml",
        real_dev_root / "images_root",
        real_dev_root / "masks_root",
        project,
    )
    start = time.perf_counter()
    snakemake_runner(
        [
            *("--workflow-profile", "none", "--cores", "2", "--rerun-incomplete"),
            *("--configfile", "config/real_dev.yaml", str(config)),
        ],
        cwd=repo_root,
    )
    elapsed = time.perf_counter() - start
    run = "run_v1"
    metrics = json.loads((project / "reports" / "eval" / run / "metrics.json").read_text())
    assert metrics
    table = pd.read_csv(project / "reports" / "eval" / run / "metrics.csv")
    assert len(table) > 0
    for name in ("metrics.md", "reliability.png", "uncertainty_examples.png"):
        assert (project / "reports" / "eval" / run / name).is_file(), name
    assert (project / "laplace" / "no_image" / run / "posterior_meta.json").is_file()
    summary = json.loads(
        (project / "checkpoints" / "no_image" / run / "training_summary.json").read_text()
    )
    assert summary["epochs_trained"] >= 1
    manifest = pd.read_csv(project / "manifests" / "all_samples.csv")
    assert len(manifest) == 92 and manifest["valid"].all()
    assert not list(project.rglob(".tmp-*"))
    print(f"\nreal_dev end to end: {elapsed:.0f} s wall on this machine")
    print((project / "reports" / "eval" / run / "metrics.md").read_text())
