"""Training loop, resume after a real SIGKILL, resume/force rules and the sanity check."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers.synthetic_h5 import make_synthetic_h5

from laplace_head.errors import LaplaceHeadError
from laplace_head.settings import Runtime, stage_params
from laplace_head.training import checkpoint as ckpt
from laplace_head.training.loop import KILL_AFTER_STEPS_ENV, TrainingSettings, train_head
from laplace_head.training.sanity import SanityCheckFailed, sanity_check_to_file
from laplace_head.util.atomic import read_json, read_yaml

REPO = Path(__file__).resolve().parents[2]
TRAINING = {
    "batch_size": 4,
    "num_epochs": 3,
    "lr": 0.01,
    "num_workers": 0,
    "early_stop_patience": 5,
    "device": "cpu",
    "in_memory": "never",
}


def _project(root: Path, n_train: int = 8, n_val: int = 4, size: int = 256, **training) -> Path:
    """A project_root with packed train/val files and a config YAML; returns the config path."""
    data_dir = root / "project" / "training_data" / "no_image"
    make_synthetic_h5(data_dir / "train.h5", n_train, seed=1, size=size)
    make_synthetic_h5(data_dir / "val.h5", n_val, seed=2, split="val", size=size)
    config = {
        "data": {"project_root": str(root / "project")},
        "sam": {"backend": "random_walker"},
        "head": {"hidden_channels": 8},
        "training": {**TRAINING, **training},
        "wandb": {"enabled": False},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_dir(config_path: Path, run_id: str = "t") -> Path:
    return config_path.parent / "project" / "checkpoints" / "no_image" / f"run_{run_id}"


def _script(config_path: Path, *flags: str, env: dict | None = None, run_id: str = "t"):
    command = [sys.executable, "-m", "laplace_head", "train-head", "--config", str(config_path)]
    command += ["--run_id", run_id]
    return subprocess.run(
        [*command, *flags],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _train(config_path: Path, **kwargs) -> dict:
    from laplace_head.config import load_config

    config = load_config(config_path, check_paths=False)
    data_dir = Path(config["data"]["project_root"]) / "training_data" / "no_image"
    return train_head(
        data_dir / "train.h5",
        data_dir / "val.h5",
        _run_dir(config_path),
        TrainingSettings.from_params(
            stage_params(config)["train_head"], Runtime.from_config(config)
        ),
        "t",
        run_config=config,
        **kwargs,
    )


def test_one_epoch_writes_every_run_file(tmp_path):
    config_path = _project(tmp_path, num_epochs=1)
    summary = _train(config_path)
    run_dir = _run_dir(config_path)
    for name in (*ckpt.RESUME_FILES, ckpt.SUMMARY_FILE):
        assert (run_dir / name).is_file(), name
    assert read_json(run_dir / ckpt.SUMMARY_FILE) == summary
    assert summary["epochs_trained"] == 1 and summary["device"] == "cpu" and not summary["amp"]
    assert summary["throughput_samples_per_s"] > 0 and summary["train_rows"] == 8
    assert 0.0 <= summary["base_val_iou"] <= 1.0
    model, best = ckpt.load_head_from_checkpoint(run_dir / ckpt.BEST_FILE)
    assert model.hidden_channels == 8
    assert set(best["metrics"]) == {"val_iou", "val_dice", "val_loss", "train_loss"}
    assert best["metrics"]["val_iou"] == summary["best"]["val_iou"]
    assert best["config"]["training"]["batch_size"] == 4
    assert read_yaml(run_dir / ckpt.CONFIG_FILE) == best["config"]
    state = read_json(run_dir / ckpt.EPOCH_STATE_FILE)
    assert state["epoch"] == 1 and state["patience_counter"] == 0 and state["rng_states"]


def test_head_beats_base_on_learnable_data(tmp_path):
    summary = _train(_project(tmp_path, n_train=12, n_val=4, num_epochs=2))
    assert summary["head_beats_base"], summary
    assert summary["best"]["val_iou"] > summary["base_val_iou"] + 0.05


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    straight = _project(tmp_path / "straight")
    killed = _project(tmp_path / "killed")
    assert _script(straight).returncode == 0
    # 8 rows / batch 4 = 2 steps per epoch: the kill after step 3 lands mid-epoch 2.
    crashed = _script(killed, env={KILL_AFTER_STEPS_ENV: "3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert read_json(_run_dir(killed) / ckpt.EPOCH_STATE_FILE)["epoch"] == 1
    assert not (_run_dir(killed) / ckpt.SUMMARY_FILE).exists()
    resumed = _script(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run t after epoch 1" in resumed.stderr
    history = read_json(_run_dir(killed) / ckpt.SUMMARY_FILE)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]  # no epoch trained twice
    for name in (ckpt.BEST_FILE, ckpt.LAST_FILE):
        expected = torch.load(_run_dir(straight) / name, weights_only=True)
        got = torch.load(_run_dir(killed) / name, weights_only=True)
        assert got["epoch"] == expected["epoch"] and got["metrics"] == expected["metrics"]
        for key, value in expected["model_state"].items():
            assert torch.equal(got["model_state"][key], value), (name, key)


def test_standalone_resume_errors_name_the_problem(tmp_path):
    config_path = _project(tmp_path, num_epochs=1)
    assert _script(config_path).returncode == 0
    again = _script(config_path)
    assert again.returncode == 1 and "--resume" in again.stderr and "--force" in again.stderr
    (_run_dir(config_path) / ckpt.OPTIMIZER_FILE).unlink()
    missing = _script(config_path, "--resume")
    assert missing.returncode == 1
    assert "optimizer_last.pt" in missing.stderr and "is missing" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert _script(config_path, "--force").returncode == 0  # starts over
    assert (_run_dir(config_path) / ckpt.OPTIMIZER_FILE).is_file()


def test_changed_config_fails_unless_forced_and_auto_resume_trains_nothing_new(tmp_path):
    config_path = _project(tmp_path, num_epochs=1)
    _train(config_path)
    changed = yaml.safe_load(config_path.read_text())
    changed["training"].update(num_epochs=2, lr=0.02, num_workers=2)
    config_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(LaplaceHeadError) as error:
        _train(config_path, resume="require")
    assert "training.num_epochs: 1 -> 2" in str(error.value)
    assert "training.lr: 0.01 -> 0.02" in str(error.value)
    assert "num_workers" not in str(error.value)
    summary = _train(config_path, resume="require", force=True)
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert read_yaml(_run_dir(config_path) / ckpt.CONFIG_FILE)["training"]["lr"] == 0.02
    again = _train(config_path, resume="auto")  # finished: nothing left to train
    assert again["history"] == summary["history"]


def test_empty_split_is_a_clear_error(tmp_path):
    config_path = _project(tmp_path, n_val=0)
    with pytest.raises(LaplaceHeadError, match="val split file .* has 0 rows"):
        _train(config_path)


def test_sanity_check_passes_on_learnable_data(tmp_path):
    config_path = _project(tmp_path)
    result = _script(config_path, "--sanity_check")
    assert result.returncode == 0, result.stderr
    report = read_json(_run_dir(config_path) / "sanity_check.json")
    assert report["passed"] and report["best_iou"] > 0.9 and len(report["rows"]) == 4


def test_sanity_check_fails_on_shuffled_targets(tmp_path):
    path = make_synthetic_h5(tmp_path / "train.h5", 4, seed=1)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r+") as handle:
        masks = handle["gt_mask_256"][:]
        for row in range(len(masks)):  # permute pixels: nothing left to learn
            masks[row] = rng.permutation(masks[row].ravel()).reshape(masks[row].shape)
        handle["gt_mask_256"][:] = masks
    with pytest.raises(SanityCheckFailed, match=r"IoU curve \(step:IoU\): 1:"):
        sanity_check_to_file(path, tmp_path / "sanity.json", max_steps=10, device="cpu")
    report = read_json(tmp_path / "sanity.json")
    assert report["passed"] is False and report["steps"] == 10 and report["best_iou"] < 0.5


# --- a non-finite loss stops training, naming epoch, step and the likely cause ---------------


def _poison(h5_path: Path, dataset: str, row: int, value: float = float("nan")) -> None:
    with h5py.File(h5_path, "r+") as handle:
        data = handle[dataset][row]
        data[10, 10] = value
        handle[dataset][row] = data


def test_nan_in_the_training_inputs_stops_training_naming_epoch_step_and_map(tmp_path):
    config_path = _project(tmp_path, num_epochs=2)
    data_dir = tmp_path / "project" / "training_data" / "no_image"
    _poison(data_dir / "train.h5", "pos_map", row=5)
    with pytest.raises(LaplaceHeadError) as caught:
        _train(config_path)
    message = str(caught.value)
    assert "not finite" in message and "epoch 1" in message and "step " in message, message
    assert "pos_map" in message and "train.h5" in message, message
    # nothing of the failed epoch was committed
    assert not (_run_dir(config_path) / ckpt.EPOCH_STATE_FILE).exists()
    assert not (_run_dir(config_path) / ckpt.BEST_FILE).exists()


def test_inf_in_the_prompt_maps_is_caught_too(tmp_path):
    config_path = _project(tmp_path, num_epochs=1)
    data_dir = tmp_path / "project" / "training_data" / "no_image"
    _poison(data_dir / "train.h5", "neg_map", row=0, value=float("inf"))
    with pytest.raises(LaplaceHeadError, match=r"not finite.*neg_map"):
        _train(config_path)


def test_non_finite_loss_from_a_setting_names_the_settings_and_keeps_the_last_epoch(
    tmp_path, monkeypatch
):
    import laplace_head.training.loop as loop

    config_path = _project(tmp_path, num_epochs=3)
    real_loss = loop.bce_dice_loss
    calls = []

    def diverging_loss(logits, target, dice_lambda):
        loss = real_loss(logits, target, dice_lambda)
        calls.append(torch.is_grad_enabled())
        # epoch 1: 2 training steps + 1 validation batch; the 4th call is epoch 2, step 1
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(loop, "bce_dice_loss", diverging_loss)
    with pytest.raises(LaplaceHeadError) as caught:
        _train(config_path)
    message = str(caught.value)
    assert "epoch 2, step 1" in message, message
    assert "training.lr" in message and "training.dice_lambda" in message, message
    state = read_json(_run_dir(config_path) / ckpt.EPOCH_STATE_FILE)
    assert state["epoch"] == 1
    assert torch.load(_run_dir(config_path) / ckpt.LAST_FILE, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "bce_dice_loss", real_loss)
    summary = _train(config_path, resume="require")
    assert [row["epoch"] for row in summary["history"]] == [1, 2, 3]


def test_nan_in_the_validation_split_stops_before_the_epoch_is_committed(tmp_path):
    config_path = _project(tmp_path, num_epochs=1)
    data_dir = tmp_path / "project" / "training_data" / "no_image"
    _poison(data_dir / "val.h5", "pos_map", row=1)
    with pytest.raises(LaplaceHeadError) as caught:
        _train(config_path)
    message = str(caught.value)
    assert "val.h5" in message and "not finite" in message and "epoch 1" in message, message
    assert not (_run_dir(config_path) / ckpt.EPOCH_STATE_FILE).exists()


# --- best.pt never runs ahead of (or behind) the committed epoch ------------------------------


class _Killed(BaseException):
    """Stands for a SIGKILL between two renames of the run directory."""


def _renames(monkeypatch, run_dir: Path, crash_at: int | None = None) -> list[str]:
    """Log the names renamed into ``run_dir``; raise _Killed instead of rename ``crash_at``."""
    real_replace = os.replace
    log: list[str] = []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == run_dir:
            if crash_at is not None and len(log) == crash_at:
                raise _Killed(Path(dst).name)
            log.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return log


def _assert_consistent(run_dir: Path) -> dict:
    """What resume sees: loadable, best.pt is the best epoch epoch_state.json records."""
    state = ckpt.load_training_state(run_dir)
    epoch_state = state["epoch_state"]
    best = torch.load(run_dir / ckpt.BEST_FILE, weights_only=True)
    assert best["epoch"] == epoch_state["best_epoch"], (best["epoch"], epoch_state["best_epoch"])
    assert best["metrics"]["val_iou"] == epoch_state["best_val_iou"]
    assert state["last"]["epoch"] == epoch_state["epoch"]
    return epoch_state


def test_a_kill_at_any_rename_of_an_epoch_commit_leaves_best_consistent(tmp_path, monkeypatch):
    straight = _project(tmp_path / "straight", num_epochs=2, size=64)
    with monkeypatch.context() as patch:
        log = _renames(patch, _run_dir(straight))
        expected = _train(straight)
    assert expected["best_epoch"] == 2, "precondition: epoch 2 improves, so it writes best.pt"
    expected_best = torch.load(_run_dir(straight) / ckpt.BEST_FILE, weights_only=True)
    first_commit = log.index(ckpt.EPOCH_STATE_FILE)
    crash_points = range(first_commit + 1, len(log))
    assert len(crash_points) >= 3, log
    for crash_at in crash_points:
        config_path = _project(tmp_path / f"crash_{crash_at}", num_epochs=2, size=64)
        run_dir = _run_dir(config_path)
        with monkeypatch.context() as patch:
            _renames(patch, run_dir, crash_at=crash_at)
            with pytest.raises(_Killed):
                _train(config_path)
        where = f"killed before renaming {log[crash_at]} (rename {crash_at} of {log})"
        try:
            _assert_consistent(run_dir)
        except (AssertionError, LaplaceHeadError) as error:
            raise AssertionError(f"{where}: {error}") from error
        summary = _train(config_path, resume="require")
        best = torch.load(run_dir / ckpt.BEST_FILE, weights_only=True)
        assert summary["best"] == best["metrics"] == expected["best"], where
        assert summary["best_epoch"] == best["epoch"] == 2, where
        for key, value in expected_best["model_state"].items():
            assert torch.equal(best["model_state"][key], value), (where, key)
        assert not [p.name for p in run_dir.iterdir() if p.name.startswith("staged")], where
