"""``python -m laplace_head``: stages 6 and 7 stand-alone read and write where the layout says."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize("run_id", ["v1\n", "../escaped", "a/b", "", "x y"])
def test_run_id_flag_is_checked_like_the_configs_run_id(tmp_path: Path, capsys, run_id) -> None:
    root = tmp_path / "project"
    config = _config(tmp_path, root)
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit-laplace", "--config", str(config), "--run_id", run_id])
    assert stop.value.code == 2  # argparse's usage error
    error = capsys.readouterr().err
    assert "--run_id" in error and "training.run_id" in error and repr(run_id) in error
    assert not (root / "logs").exists()  # refused before any file is written


@pytest.mark.parametrize("shard", ["0000/../../../escaped", "../1", "1\n", "-1", "00x1"])
def test_shard_flag_must_be_a_shard_name(tmp_path: Path, capsys, shard) -> None:
    root = tmp_path / "project"
    config = _config(tmp_path, root)
    with pytest.raises(SystemExit) as stop:
        cli_main(["precompute-sam", "--config", str(config), "--split", "val", "--shard", shard])
    assert stop.value.code == 2  # argparse's usage error
    assert "--shard" in capsys.readouterr().err
    assert not (root / "logs").exists() and not (tmp_path / "escaped.log").exists()
