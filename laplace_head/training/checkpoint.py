"""Checkpoints of the head and the full training state of a run, saved atomically.

A run directory (:attr:`laplace_head.layout.ProjectLayout.run_dir`) holds:

* ``config.yaml`` - the resolved config the run was started with (the truth on resume);
* ``best.pt`` / ``last.pt`` - plain dicts ``{"model_state", "model_args", "epoch", "metrics",
  "run_id", "config"}``; ``model_args`` rebuild :class:`~laplace_head.model.head.NoImageHead`;
* ``optimizer_last.pt`` / ``scaler_last.pt`` - ``{"epoch", "state"}`` plain dicts;
* ``epoch_state.json`` - last completed epoch, best IoU, patience counter, history, RNG states,
  wandb run id. It is the commit marker of an epoch: the four files of an epoch are written to
  temporary names first and renamed into place only once all are on disk, ``epoch_state.json``
  last, so a kill leaves either the previous epoch's consistent state or the new one (the
  renames take microseconds; :func:`load_training_state` checks the epochs agree).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import BEST_CHECKPOINT, TRAINING_SUMMARY
from laplace_head.model.head import NoImageHead
from laplace_head.settings import is_runtime_key
from laplace_head.util.atomic import atomic_path, json_dumps, read_json, read_yaml

CONFIG_FILE = "config.yaml"
LAST_FILE = "last.pt"
BEST_FILE = BEST_CHECKPOINT
OPTIMIZER_FILE = "optimizer_last.pt"
SCALER_FILE = "scaler_last.pt"
EPOCH_STATE_FILE = "epoch_state.json"
SUMMARY_FILE = TRAINING_SUMMARY
# best.pt too: it exists from the first completed epoch on, and the summary reads it.
RESUME_FILES = (CONFIG_FILE, LAST_FILE, BEST_FILE, OPTIMIZER_FILE, SCALER_FILE, EPOCH_STATE_FILE)
STATE_FORMAT_VERSION = 1


class CheckpointError(LaplaceHeadError):
    """A checkpoint or training-state file is missing, unreadable or inconsistent."""


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load`` a plain-dict checkpoint (``weights_only=True``: no arbitrary unpickling).

    Raises
    ------
    CheckpointError
        Naming the file, when it is missing, unreadable or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO failure means unreadable
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is unreadable ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint file {str(path)!r} does not hold a dict.")
    return payload


def model_checkpoint(
    model: NoImageHead,
    epoch: int,
    metrics: Mapping[str, float],
    run_id: str,
    config: Mapping[str, Any],
) -> dict:
    """The plain dict stored in ``best.pt`` / ``last.pt`` (weights copied to CPU)."""
    return {
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model_args": dict(model.constructor_args),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "run_id": str(run_id),
        "config": dict(config),
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    """``torch.save`` a plain dict atomically (temp file in the same folder + rename)."""
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)


def load_head_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[NoImageHead, dict]:
    """Rebuild the head from a ``best.pt``/``last.pt`` using its saved constructor arguments.

    Returns
    -------
    (NoImageHead, dict)
        The model in eval mode on ``map_location`` and the checkpoint dict (``epoch``,
        ``metrics``, ``run_id``, ``config`` ...).

    Raises
    ------
    CheckpointError
        Naming the file, when it is missing, unreadable or lacks ``model_state``/``model_args``.
    """
    checkpoint = load_torch_file(path, map_location=map_location)
    missing = [key for key in ("model_state", "model_args") if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} lacks {', '.join(missing)}; it is not a head "
            "checkpoint written by train_head."
        )
    model = NoImageHead(**checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint file {str(path)!r}: weights do not fit ({exc})."
        ) from exc
    return model.to(map_location).eval(), checkpoint


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng_states() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states as JSON-serialisable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": _encode_bytes(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available():
        states["cuda"] = [_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (CUDA states only when CUDA is available)."""
    py_version, py_state, py_gauss = states["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = states["numpy"]
    np.random.set_state(
        (np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(_decode_bytes(states["torch"]))
    if states.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count: leave CUDA seeds alone
            torch.cuda.set_rng_state_all([_decode_bytes(s) for s in states["cuda"]])


def save_training_state(
    run_dir: str | os.PathLike,
    last_checkpoint: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch_state: Mapping[str, Any],
) -> None:
    """Write ``last.pt``, ``optimizer_last.pt``, ``scaler_last.pt`` then ``epoch_state.json``.

    All four are written to temporary files first; the renames happen together at the end in
    that order (``epoch_state.json`` last), see the module docstring.
    """
    run_dir = Path(run_dir)
    epoch = int(epoch_state["epoch"])
    with contextlib.ExitStack() as stack:
        # ExitStack renames in reverse order of entry: enter epoch_state.json first.
        state_tmp = stack.enter_context(atomic_path(run_dir / EPOCH_STATE_FILE))
        last_tmp = stack.enter_context(atomic_path(run_dir / LAST_FILE))
        scaler_tmp = stack.enter_context(atomic_path(run_dir / SCALER_FILE))
        optimizer_tmp = stack.enter_context(atomic_path(run_dir / OPTIMIZER_FILE))
        torch.save({"epoch": epoch, "state": optimizer.state_dict()}, optimizer_tmp)
        torch.save({"epoch": epoch, "state": scaler.state_dict()}, scaler_tmp)
        torch.save(dict(last_checkpoint), last_tmp)
        state_tmp.write_text(json_dumps(dict(epoch_state)), encoding="utf-8")


def load_training_state(
    run_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict:
    """Load everything resume needs; fail loudly, naming the file, if anything is off.

    Returns
    -------
    dict
        ``{"last": dict, "optimizer": state_dict, "scaler": state_dict, "epoch_state": dict}``.

    Raises
    ------
    CheckpointError
        A file of :data:`RESUME_FILES` is missing or unreadable, or the files belong to
        different epochs.
    """
    run_dir = Path(run_dir)
    for name in RESUME_FILES:
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"cannot resume: {str(run_dir / name)!r} is missing. Resume needs "
                f"{', '.join(RESUME_FILES)} in {run_dir}. Start a new run (another run_id) or "
                "pass --force to start this one over."
            )
    try:
        epoch_state = read_json(run_dir / EPOCH_STATE_FILE)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot resume: {str(run_dir / EPOCH_STATE_FILE)!r} is unreadable ({exc})."
        ) from exc
    if not isinstance(epoch_state, dict) or "epoch" not in epoch_state:
        raise CheckpointError(f"cannot resume: {run_dir / EPOCH_STATE_FILE} has no 'epoch'.")
    last = load_torch_file(run_dir / LAST_FILE, map_location)
    optimizer = load_torch_file(run_dir / OPTIMIZER_FILE, map_location)
    scaler = load_torch_file(run_dir / SCALER_FILE, map_location)
    epoch = int(epoch_state["epoch"])
    for name, payload in ((LAST_FILE, last), (OPTIMIZER_FILE, optimizer), (SCALER_FILE, scaler)):
        if int(payload.get("epoch", -1)) != epoch:
            raise CheckpointError(
                f"cannot resume: {run_dir / name} is from epoch {payload.get('epoch')} but "
                f"{EPOCH_STATE_FILE} says epoch {epoch} (the run was killed while saving). "
                "Start over with --force or use a new run_id."
            )
    return {
        "last": last,
        "optimizer": optimizer["state"],
        "scaler": scaler["state"],
        "epoch_state": epoch_state,
    }


# Sections of the resolved config that change what a run computes. Everything else (where the
# data lives, wandb, later stages) may differ between the start and the resumption of a run, and
# so may the runtime keys of laplace_head.settings.RUNTIME_KEYS (run id, workers, device, RAM).
RESULT_SECTIONS = ("head", "training")


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"section.key: saved -> current"`` for every result-relevant key that differs.

    Compared: every key of the ``head`` and ``training`` sections except the runtime keys of
    :data:`laplace_head.settings.RUNTIME_KEYS` (run id, worker count, device, in-RAM loading).
    """
    differences = []
    for section in RESULT_SECTIONS:
        old = dict(saved.get(section) or {})
        new = dict(current.get(section) or {})
        for key in sorted(set(old) | set(new)):
            dotted = f"{section}.{key}"
            if not is_runtime_key(section, key) and old.get(key) != new.get(key):
                differences.append(f"{dotted}: {old.get(key)!r} -> {new.get(key)!r}")
    return differences


RESUME_MODES = ("never", "auto", "require")


def prepare_run_dir(
    run_dir: str | os.PathLike, resume: str, force: bool, run_config: Mapping[str, Any]
) -> dict | None:
    """Apply the resume rules to a run directory; return its training state or None (fresh).

    ``resume``: ``never`` starts fresh (a directory holding completed epochs is an error unless
    ``force``, which deletes its checkpoints); ``require`` loads the state and fails, naming the
    file, if anything is missing; ``auto`` (Snakemake) resumes when ``epoch_state.json`` exists
    and starts fresh otherwise. When resuming, a result-relevant difference between
    ``run_config`` and the saved ``config.yaml`` is an error listing the keys unless ``force``.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}; got {resume!r}")
    run_dir = Path(run_dir)
    has_epochs = (run_dir / EPOCH_STATE_FILE).is_file()
    if resume == "never" and has_epochs and not force:
        raise LaplaceHeadError(
            f"run directory {run_dir} already holds completed epochs. Pass --resume to continue "
            "it, --force to start it over (its checkpoints are deleted), or choose a new run_id."
        )
    if resume == "never" or (resume == "auto" and not has_epochs):
        for name in (*RESUME_FILES, SUMMARY_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return None
    state = load_training_state(run_dir)
    saved_config = read_yaml(run_dir / CONFIG_FILE) or {}
    differences = config_differences(saved_config, run_config)
    if differences and not force:
        raise LaplaceHeadError(
            f"the config differs from the one run {run_dir.name} was started with "
            f"({run_dir / CONFIG_FILE}, the run's truth): "
            + "; ".join(differences)
            + ". Restore those values, choose a new run_id, or pass --force with --resume to "
            "continue with the new values."
        )
    state["config_differences"] = differences
    return state


def new_epoch_state(run_id: str, data_fingerprint: Mapping[str, Any]) -> dict:
    """``epoch_state.json`` content before the first epoch (``epoch`` = epochs completed)."""
    return {
        "format_version": STATE_FORMAT_VERSION,
        "run_id": run_id,
        "epoch": 0,
        "best_val_iou": None,
        "best_epoch": None,
        "patience_counter": 0,
        "stopped_early": False,
        "history": [],
        "base_val_iou": None,
        "train_seconds": 0.0,
        "train_samples": 0,
        "data": dict(data_fingerprint),
        "wandb_run_id": None,
        "rng_states": None,
    }


def restore_training_state(
    state: Mapping[str, Any],
    model: NoImageHead,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """Load :func:`load_training_state` output into fresh objects and restore the RNG states.

    ``lr`` / ``weight_decay``, when given, replace the saved values in every parameter group.

    Raises
    ------
    CheckpointError
        When the saved head was built with other constructor arguments than ``model``.
    """
    saved_args = state["last"].get("model_args")
    if saved_args != model.constructor_args:
        raise CheckpointError(
            f"cannot resume: the saved head has {saved_args} but the config asks for "
            f"{model.constructor_args}. Start over (--force without --resume) or use a new run_id."
        )
    model.load_state_dict(state["last"]["model_state"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        if lr is not None:
            group["lr"] = lr
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
    scaler.load_state_dict(state["scaler"])
    if state["epoch_state"].get("rng_states"):
        restore_rng_states(state["epoch_state"]["rng_states"])
