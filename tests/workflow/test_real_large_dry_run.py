"""`make real-large` plans the workflow on ../shared/data/real_large (the one test reading it).

Slow (run with ``pytest -m slow``): it needs the 392-pair real_large data beside the repository.
The snakemake command is the one the Makefile's ``real-large`` target runs (``make -n``), with
``-n`` and an extra config file that moves ``project_root`` to a temporary folder.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from laplace_head.config.loader import load_configs

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def _real_large_root(repo_root: Path) -> Path:
    root = repo_root.parent / "shared" / "data" / "real_large"
    if not (root / "images_root").is_dir() or not (root / "masks_root").is_dir():
        pytest.skip(f"real_large data not found at {root} (expected images_root/, masks_root/)")
    return root


def _make_command(repo_root: Path) -> list[str]:
    """The snakemake command line of ``make real-large``."""
    plan = subprocess.run(
        ["make", "-n", "real-large"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout
    [line] = [line for line in plan.splitlines() if "snakemake" in line]
    return shlex.split(line)


def test_make_real_large_dry_run(tmp_path: Path, repo_root: Path, snakemake_runner) -> None:
    root = _real_large_root(repo_root)
    command = _make_command(repo_root)
    configs = command[command.index("--configfile") + 1 :]
    assert configs == ["config/config.yaml", "config/real_dev.yaml", "config/real_large.yaml"]
    resolved = load_configs([repo_root / path for path in configs], check_paths=False)
    assert Path(repo_root / resolved["data"]["images_root"]).resolve() == root / "images_root"
    assert resolved["data"]["project_root"] == "real_large_project"
    assert resolved["data"]["split_fractions"] == [0.15, 0.15]

    override = tmp_path / "elsewhere.yaml"
    project = tmp_path / "project"
    override.write_text(yaml.safe_dump({"data": {"project_root": str(project)}}))
    process = snakemake_runner(
        [*command[1:], str(override), "-n", "--workflow-profile", "none"], cwd=repo_root
    )
    output = process.stdout + process.stderr
    # A fresh project: the manifests checkpoint comes first, every later job waits on it.
    assert "build_manifests" in output, output[-3000:]
    assert not project.exists()
