"""``python -m laplace_head``: stages 6 and 7 stand-alone read and write where the layout says."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.cli import main as cli_main
from laplace_head.layout import ProjectLayout
from laplace_head.util.atomic import read_json


def _config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "config.yaml"
    settings = {
        "data": {"project_root": str(root)},
        "training": {"run_id": "t1"},
        "laplace": {"prior_precision_grid": [0.1, 10.0], "n_posterior_samples": 4},
        "wandb": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(settings))
    return config


def test_fit_and_evaluate_use_the_runs_layout(tmp_path: Path) -> None:
    root = tmp_path / "project"
    make_fitted_run(root)
    layout = ProjectLayout(root, "t1")
    state = layout.laplace_file("state")
    before = state.stat().st_mtime_ns
    config = _config(tmp_path, root)

    cli_main(["fit-laplace", "--config", str(config), "--force"])
    assert state.stat().st_mtime_ns != before  # refitted in place, from the run's best.pt
    assert read_json(layout.laplace_file("meta"))["run_id"] == "t1"
    assert layout.log("fit_laplace").is_file()

    cli_main(["evaluate", "--config", str(config)])
    assert all(path.is_file() for path in layout.eval_files().values())
    assert read_json(layout.eval_file("metrics"))["run_id"] == "t1"
    assert layout.log("evaluate").is_file()
