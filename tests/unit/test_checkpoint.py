"""Checkpoint dicts, atomic training state, resume rules and their error messages."""

import random

import numpy as np
import pytest
import torch

from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.training import checkpoint as ckpt
from laplace_head.util.atomic import atomic_write_json, atomic_write_yaml, read_json

CONFIG = {"head": {"channels_in": 3, "hidden_channels": 4}, "training": {"lr": 0.001}}


def _model_and_optimizer():
    torch.manual_seed(0)
    model = NoImageHead(hidden_channels=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def _write_state(run_dir, epoch=2):
    model, optimizer = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    last = ckpt.model_checkpoint(model, epoch, {"val_iou": 0.5}, "t", CONFIG)
    atomic_write_yaml(run_dir / ckpt.CONFIG_FILE, CONFIG)
    ckpt.save_checkpoint(run_dir / ckpt.BEST_FILE, last)
    ckpt.save_training_state(run_dir, last, optimizer, scaler, {"epoch": epoch, "best": 0.5})
    return model, optimizer


def test_head_roundtrip_rebuilds_from_saved_arguments(tmp_path):
    model, _ = _model_and_optimizer()
    payload = ckpt.model_checkpoint(model, 3, {"val_iou": 0.7}, "v1", CONFIG)
    ckpt.save_checkpoint(tmp_path / "best.pt", payload)
    loaded, saved = ckpt.load_head_from_checkpoint(tmp_path / "best.pt")
    assert loaded.hidden_channels == 4 and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert saved["epoch"] == 3 and saved["metrics"] == {"val_iou": 0.7}
    assert saved["run_id"] == "v1" and saved["config"] == CONFIG
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_unreadable_and_foreign_checkpoints_name_the_file(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="best.pt.*missing"):
        ckpt.load_head_from_checkpoint(tmp_path / "best.pt")
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="broken.pt.*unreadable"):
        ckpt.load_head_from_checkpoint(tmp_path / "broken.pt")
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="other.pt.*model_state"):
        ckpt.load_head_from_checkpoint(tmp_path / "other.pt")


def test_training_state_roundtrip(tmp_path):
    model, optimizer = _write_state(tmp_path)
    state = ckpt.load_training_state(tmp_path)
    assert state["epoch_state"] == {"epoch": 2, "best": 0.5}
    assert state["last"]["epoch"] == 2
    restored = torch.optim.AdamW(NoImageHead(hidden_channels=4).parameters(), lr=1e-3)
    restored.load_state_dict(state["optimizer"])
    for group_state, expected in zip(restored.state.values(), optimizer.state.values()):
        assert torch.equal(group_state["exp_avg"], expected["exp_avg"])


@pytest.mark.parametrize("name", ckpt.RESUME_FILES)
def test_resume_fails_naming_each_missing_file(tmp_path, name):
    _write_state(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ckpt.CheckpointError, match=f"{name}.*is missing"):
        ckpt.load_training_state(tmp_path)


def test_resume_fails_on_unreadable_state_or_mixed_epochs(tmp_path):
    _write_state(tmp_path, epoch=2)
    (tmp_path / ckpt.OPTIMIZER_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ckpt.CheckpointError, match="optimizer_last.pt.*unreadable"):
        ckpt.load_training_state(tmp_path)
    _write_state(tmp_path, epoch=2)
    torch.save({"epoch": 3, "state": {}}, tmp_path / ckpt.SCALER_FILE)
    with pytest.raises(ckpt.CheckpointError, match="scaler_last.pt is from epoch 3"):
        ckpt.load_training_state(tmp_path)
    (tmp_path / ckpt.EPOCH_STATE_FILE).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="epoch_state.json.*unreadable"):
        ckpt.load_training_state(tmp_path)


def test_rng_states_roundtrip_through_json(tmp_path):
    states = ckpt.capture_rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    atomic_write_json(tmp_path / "rng.json", states)
    ckpt.restore_rng_states(read_json(tmp_path / "rng.json"))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_config_differences_ignore_runtime_keys():
    saved = {
        "head": {"hidden_channels": 16},
        "training": {"lr": 0.001, "num_workers": 8, "device": "cuda", "run_id": "a"},
        "wandb": {"mode": "offline"},
    }
    current = {
        "head": {"hidden_channels": 16},
        "training": {"lr": 0.01, "num_workers": 0, "device": "cpu", "run_id": "b"},
        "wandb": {"mode": "online"},
    }
    assert ckpt.config_differences(saved, current) == ["training.lr: 0.001 -> 0.01"]


def test_prepare_run_dir_rules(tmp_path):
    assert ckpt.prepare_run_dir(tmp_path, "auto", False, CONFIG) is None
    _write_state(tmp_path)
    with pytest.raises(LaplaceHeadError, match="--resume.*--force"):
        ckpt.prepare_run_dir(tmp_path, "never", False, CONFIG)
    assert ckpt.prepare_run_dir(tmp_path, "auto", False, CONFIG)["epoch_state"]["epoch"] == 2
    changed = {**CONFIG, "training": {"lr": 0.5}}
    with pytest.raises(LaplaceHeadError, match=r"training.lr: 0.001 -> 0.5"):
        ckpt.prepare_run_dir(tmp_path, "require", False, changed)
    forced = ckpt.prepare_run_dir(tmp_path, "require", True, changed)
    assert forced["config_differences"] == ["training.lr: 0.001 -> 0.5"]
    assert ckpt.prepare_run_dir(tmp_path, "never", True, CONFIG) is None
    assert not (tmp_path / ckpt.LAST_FILE).exists()
    assert not (tmp_path / ckpt.EPOCH_STATE_FILE).exists()
    with pytest.raises(ValueError, match="never, auto, require"):
        ckpt.prepare_run_dir(tmp_path, "maybe", False, CONFIG)


# --- model_args of a checkpoint are validated before any module is built ----------------------


def _crafted(path, model_args, hidden=4):
    model, _ = _model_and_optimizer() if hidden == 4 else (NoImageHead(hidden_channels=hidden), 0)
    payload = ckpt.model_checkpoint(model, 1, {"val_iou": 0.5}, "t", CONFIG)
    payload["model_args"] = model_args
    torch.save(payload, path)
    return path


@pytest.fixture
def constructor_spy(monkeypatch):
    """Fails the test if load_head_from_checkpoint builds a head from unchecked arguments."""
    built = []

    class Spy(NoImageHead):
        def __init__(self, *args, **kwargs):
            built.append(kwargs or args)
            hidden = kwargs.get("hidden_channels", args[1] if len(args) > 1 else 16)
            if not isinstance(hidden, int) or hidden > 1024:
                raise AssertionError(f"a head was built from unchecked model_args {kwargs}")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ckpt, "NoImageHead", Spy)
    return built


BAD_MODEL_ARGS = {
    "unknown key": ({"channels_in": 3, "hidden_channels": 4, "dropout": 0.5}, "dropout"),
    "missing key": ({"channels_in": 3}, "hidden_channels"),
    "huge width": ({"channels_in": 3, "hidden_channels": 10**12}, "1000000000000"),
    "above the schema maximum": ({"channels_in": 3, "hidden_channels": 1025}, "1025"),
    "zero width": ({"channels_in": 3, "hidden_channels": 0}, "hidden_channels = 0"),
    "negative width": ({"channels_in": 3, "hidden_channels": -4}, "-4"),
    "float width": ({"channels_in": 3, "hidden_channels": 4.0}, "4.0"),
    "bool width": ({"channels_in": 3, "hidden_channels": True}, "True"),
    "string width": ({"channels_in": 3, "hidden_channels": "4"}, "'4'"),
    "other input channels": ({"channels_in": 4, "hidden_channels": 4}, "channels_in = 4"),
    "not a mapping": ([3, 4], "model_args"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_ARGS))
def test_crafted_model_args_raise_a_checkpoint_error_naming_file_and_value(
    tmp_path, constructor_spy, case
):
    model_args, named = BAD_MODEL_ARGS[case]
    path = _crafted(tmp_path / "crafted.pt", model_args)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_head_from_checkpoint(path)
    message = str(caught.value)
    assert "crafted.pt" in message and named in message and "model_args" in message, message
    assert constructor_spy == [], "no module may be built from invalid model_args"


def test_valid_model_args_at_the_schema_limits_load(tmp_path):
    path = _crafted(tmp_path / "wide.pt", {"channels_in": 3, "hidden_channels": 1}, hidden=1)
    model, _ = ckpt.load_head_from_checkpoint(path)
    assert model.hidden_channels == 1


def test_model_state_that_is_not_a_mapping_is_a_checkpoint_error(tmp_path):
    model, _ = _model_and_optimizer()
    payload = ckpt.model_checkpoint(model, 1, {"val_iou": 0.5}, "t", CONFIG)
    payload["model_state"] = [1, 2, 3]
    torch.save(payload, tmp_path / "state.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"state\.pt.*model_state"):
        ckpt.load_head_from_checkpoint(tmp_path / "state.pt")


# --- the epoch commit: staged files, roll forward / discard, best.pt agrees with the state ---


def _commit(run_dir, epoch, best_epoch, improved):
    model, optimizer = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    last = ckpt.model_checkpoint(model, epoch, {"val_iou": 0.1 * epoch}, "t", CONFIG)
    state = {"epoch": epoch, "best_epoch": best_epoch, "best_val_iou": 0.1 * best_epoch}
    ckpt.save_training_state(
        run_dir, last, optimizer, scaler, state, best_checkpoint=last if improved else None
    )
    return last


def _epoch_of(path):
    return torch.load(path, weights_only=True)["epoch"]


def test_best_is_committed_with_the_epoch_and_nothing_stays_staged(tmp_path):
    atomic_write_yaml(tmp_path / ckpt.CONFIG_FILE, CONFIG)
    _commit(tmp_path, 1, 1, improved=True)
    _commit(tmp_path, 2, 1, improved=False)
    assert _epoch_of(tmp_path / ckpt.BEST_FILE) == 1 and _epoch_of(tmp_path / ckpt.LAST_FILE) == 2
    assert not list(tmp_path.glob(ckpt.STAGED_PREFIX + "*"))
    assert ckpt.load_training_state(tmp_path)["epoch_state"]["best_epoch"] == 1


def test_staged_files_of_an_uncommitted_epoch_are_discarded_on_resume(tmp_path, monkeypatch):
    atomic_write_yaml(tmp_path / ckpt.CONFIG_FILE, CONFIG)
    _commit(tmp_path, 1, 1, improved=True)
    real_atomic_path = ckpt.atomic_path

    def killed_at_commit(path, *args, **kwargs):
        if path.name == ckpt.EPOCH_STATE_FILE:
            raise KeyboardInterrupt  # stands for a kill before the commit point
        return real_atomic_path(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "atomic_path", killed_at_commit)
    with pytest.raises(KeyboardInterrupt):
        _commit(tmp_path, 2, 2, improved=True)
    monkeypatch.undo()
    assert _epoch_of(tmp_path / ckpt.staged_name(ckpt.BEST_FILE)) == 2
    state = ckpt.load_training_state(tmp_path)
    assert state["epoch_state"]["epoch"] == 1 and state["last"]["epoch"] == 1
    assert _epoch_of(tmp_path / ckpt.BEST_FILE) == 1
    assert not list(tmp_path.glob(ckpt.STAGED_PREFIX + "*"))


def test_staged_files_of_the_committed_epoch_are_promoted_on_resume(tmp_path, monkeypatch):
    atomic_write_yaml(tmp_path / ckpt.CONFIG_FILE, CONFIG)
    _commit(tmp_path, 1, 1, improved=True)

    def killed_after_commit(run_dir, names):
        raise KeyboardInterrupt  # stands for a kill between the commit and the promotion

    monkeypatch.setattr(ckpt, "_promote_staged", killed_after_commit)
    with pytest.raises(KeyboardInterrupt):
        _commit(tmp_path, 2, 2, improved=True)
    monkeypatch.undo()
    assert _epoch_of(tmp_path / ckpt.BEST_FILE) == 1  # not promoted yet
    state = ckpt.load_training_state(tmp_path)
    assert state["epoch_state"]["epoch"] == 2 and state["last"]["epoch"] == 2
    assert _epoch_of(tmp_path / ckpt.BEST_FILE) == 2
    assert not list(tmp_path.glob(ckpt.STAGED_PREFIX + "*"))


def test_best_from_another_epoch_than_recorded_is_refused(tmp_path):
    atomic_write_yaml(tmp_path / ckpt.CONFIG_FILE, CONFIG)
    last = _commit(tmp_path, 2, 1, improved=False)
    ckpt.save_checkpoint(tmp_path / ckpt.BEST_FILE, last)  # best.pt of epoch 2, best_epoch 1
    with pytest.raises(ckpt.CheckpointError, match=r"best.pt is from epoch 2 .*best epoch 1"):
        ckpt.load_training_state(tmp_path)


def test_a_fresh_start_deletes_staged_leftovers(tmp_path):
    (tmp_path / ckpt.staged_name(ckpt.BEST_FILE)).write_bytes(b"x")
    assert ckpt.prepare_run_dir(tmp_path, "auto", False, CONFIG) is None
    assert not list(tmp_path.glob(ckpt.STAGED_PREFIX + "*"))
