"""Checkpoints of the head and the full training state of a run, saved atomically.

A run directory (:attr:`laplace_head.layout.ProjectLayout.run_dir`) holds:

* ``config.yaml`` - the resolved config the run was started with (the truth on resume);
* ``best.pt`` / ``last.pt`` - plain dicts ``{"model_state", "model_args", "epoch", "metrics",
  "run_id", "config"}``; ``model_args`` rebuild :class:`~laplace_head.model.head.NoImageHead`;
* ``optimizer_last.pt`` / ``scaler_last.pt`` - ``{"epoch", "state"}`` plain dicts;
* ``epoch_state.json`` - last completed epoch, best IoU and epoch, patience counter, history,
  RNG states, wandb run id. It is the commit marker of an epoch.

An epoch is committed in three steps (:func:`save_training_state`):

1. *stage*: ``last.pt``, ``optimizer_last.pt``, ``scaler_last.pt`` and - when the epoch improved -
   ``best.pt`` are written, each atomically and fsynced, as ``staged-<name>``;
2. *commit*: ``epoch_state.json`` is replaced atomically (the commit point);
3. *promote*: each ``staged-<name>`` is renamed onto ``<name>``.

A kill before step 2 leaves the previous epoch committed and staged files of an epoch that
never was: resume deletes them. A kill after step 2 leaves the new epoch committed with some
files still staged: resume promotes them (rolls the commit forward). Either way ``best.pt`` is
exactly the best epoch ``epoch_state.json`` records, and :func:`load_training_state` checks that
every file agrees with it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
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
from laplace_head.model.head_variant import HeadVariant
from laplace_head.settings import is_runtime_key
from laplace_head.util.atomic import (
    atomic_path,
    fsync_folder,
    json_dumps,
    read_json,
    read_yaml,
)

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
# Files of an epoch that are staged before its commit and promoted after it (module docstring).
STAGED_PREFIX = "staged-"
STAGED_FILES = (OPTIMIZER_FILE, SCALER_FILE, LAST_FILE, BEST_FILE)
LOGGER = logging.getLogger(__name__)


def staged_name(name: str) -> str:
    """The name a file of :data:`STAGED_FILES` has between staging and promotion."""
    return STAGED_PREFIX + name


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
    model_args = check_model_args(checkpoint["model_args"], path)
    state = checkpoint["model_state"]
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise CheckpointError(
            f"checkpoint file {str(path)!r}: model_state is a {type(state).__name__}, not a "
            "mapping of parameter names to tensors; the file is damaged or was not written by "
            "train_head. Retrain or restore it."
        )
    model = NoImageHead(**model_args)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint file {str(path)!r}: weights do not fit ({exc})."
        ) from exc
    return model.to(map_location).eval(), checkpoint


@functools.lru_cache(maxsize=1)
def _head_limits() -> dict[str, dict]:
    """The ``head`` section of config/schema.yaml: the limits of the model arguments."""
    from laplace_head.config.loader import load_schema

    return load_schema()["properties"]["head"]["properties"]


def check_model_args(model_args: Any, path: str | os.PathLike) -> dict[str, int]:
    """The ``model_args`` of a checkpoint, checked before any module is built from them.

    Exactly the constructor arguments of :class:`NoImageHead` (``channels_in``,
    ``hidden_channels``), plain integers within the limits of the config schema's ``head``
    section, so a crafted file can neither pass unknown arguments nor make the loader allocate
    whatever width it names.

    Raises
    ------
    CheckpointError
        Naming the file, the key and the bad value.
    """
    where = f"checkpoint file {str(path)!r}"
    fix = "the file is damaged or was not written by train_head; retrain or restore it."
    if not isinstance(model_args, Mapping):
        raise CheckpointError(
            f"{where}: model_args is a {type(model_args).__name__} ({model_args!r:.80}), not a "
            f"mapping of NoImageHead arguments; {fix}"
        )
    limits = _head_limits()
    expected = ("channels_in", "hidden_channels")
    unknown = sorted(str(key) for key in model_args if key not in expected)
    missing = [key for key in expected if key not in model_args]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"no {', '.join(missing)}")
        raise CheckpointError(
            f"{where}: model_args has {' and '.join(problems)}; NoImageHead takes exactly "
            f"{', '.join(expected)}. {fix[0].upper()}{fix[1:]}"
        )
    # channels_in: the schema fixes the no_image head's; every head variant's is valid here
    limits = {**limits, "channels_in": {"enum": sorted(v.channels_in for v in HeadVariant)}}
    checked = {}
    for key in expected:
        value, rule = model_args[key], limits[key]
        if "enum" in rule:
            allowed = f"one of {rule['enum']}"
        else:
            low, high = rule["minimum"], rule["maximum"]
            allowed = f"an integer in [{low}, {high}]"
        if isinstance(value, bool) or not isinstance(value, int):  # 16.0, True, "16"
            ok = False
        else:
            ok = value in rule["enum"] if "enum" in rule else low <= value <= high
        if not ok:
            raise CheckpointError(
                f"{where}: model_args.{key} = {value!r} is not {allowed} (the limits of "
                f"head.{key} in the config schema, channels_in: a head variant's); {fix}"
            )
        checked[key] = int(value)
    return checked


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
    best_checkpoint: Mapping[str, Any] | None = None,
) -> None:
    """Commit one epoch: stage its files, write ``epoch_state.json``, promote the staged files.

    ``best_checkpoint`` (the epoch improved) becomes ``best.pt`` as part of the same commit, so
    ``best.pt`` can never run ahead of the ``best_epoch`` that ``epoch_state.json`` records. See
    the module docstring for what a kill at any point leaves and how resume completes it.
    """
    run_dir = Path(run_dir)
    epoch = int(epoch_state["epoch"])
    for name in STAGED_FILES:  # never promote a file some earlier, uncommitted epoch staged
        (run_dir / staged_name(name)).unlink(missing_ok=True)
    staged = {
        OPTIMIZER_FILE: {"epoch": epoch, "state": optimizer.state_dict()},
        SCALER_FILE: {"epoch": epoch, "state": scaler.state_dict()},
        LAST_FILE: dict(last_checkpoint),
    }
    if best_checkpoint is not None:
        staged[BEST_FILE] = dict(best_checkpoint)
    for name, payload in staged.items():
        with atomic_path(run_dir / staged_name(name)) as tmp:
            torch.save(payload, tmp)
    with atomic_path(run_dir / EPOCH_STATE_FILE) as tmp:  # the commit point
        tmp.write_text(json_dumps(dict(epoch_state)), encoding="utf-8")
    _promote_staged(run_dir, list(staged))


def _promote_staged(run_dir: Path, names: list[str]) -> None:
    """Rename ``staged-<name>`` onto ``<name>`` for ``names``, then fsync the folder."""
    for name in names:
        os.replace(run_dir / staged_name(name), run_dir / name)
    fsync_folder(run_dir)


def complete_interrupted_commit(run_dir: str | os.PathLike, epoch_state: Mapping[str, Any]) -> None:
    """Finish or undo the commit a kill interrupted (see the module docstring).

    A staged file of the committed epoch (``epoch_state["epoch"]``; for ``best.pt`` also its
    ``best_epoch``) is promoted; any other staged file belongs to an epoch that was never
    committed and is deleted.
    """
    run_dir = Path(run_dir)
    epoch = int(epoch_state["epoch"])
    promote = []
    for name in STAGED_FILES:
        path = run_dir / staged_name(name)
        if not path.is_file():
            continue
        try:
            staged_epoch = int(load_torch_file(path).get("epoch", -1))
        except (CheckpointError, TypeError, ValueError):
            staged_epoch = None
        committed = staged_epoch == epoch
        if name == BEST_FILE and epoch_state.get("best_epoch") is not None:
            committed = committed and staged_epoch == int(epoch_state["best_epoch"])
        if committed:
            promote.append(name)
        else:
            LOGGER.warning(
                "deleting %s: staged by epoch %s, which was never committed (%s says epoch %d)",
                path, staged_epoch, EPOCH_STATE_FILE, epoch,
            )  # fmt: skip
            path.unlink()
    if promote:
        LOGGER.warning(
            "completing the commit of epoch %d that a kill interrupted: promoting %s",
            epoch, ", ".join(promote),
        )  # fmt: skip
        _promote_staged(run_dir, promote)


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
        different epochs (``best.pt`` to another epoch than the recorded ``best_epoch``).
    """
    run_dir = Path(run_dir)
    committed = None
    with contextlib.suppress(OSError, ValueError):  # missing/unreadable: reported below
        committed = read_json(run_dir / EPOCH_STATE_FILE)
    if isinstance(committed, dict) and isinstance(committed.get("epoch"), int):
        complete_interrupted_commit(run_dir, committed)
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
    best_epoch = epoch_state.get("best_epoch")
    if best_epoch is not None:
        best = load_torch_file(run_dir / BEST_FILE, map_location)
        if int(best.get("epoch", -1)) != int(best_epoch):
            raise CheckpointError(
                f"cannot resume: {run_dir / BEST_FILE} is from epoch {best.get('epoch')} but "
                f"{EPOCH_STATE_FILE} records the best epoch {best_epoch}. Start over with "
                "--force or use a new run_id."
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
        for name in (*RESUME_FILES, SUMMARY_FILE, *map(staged_name, STAGED_FILES)):
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
