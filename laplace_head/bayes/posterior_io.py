"""The on-disk format of a fitted posterior (stage 6): the one module that writes and reads it.

A fit's folder (the layout's ``laplace_dir``) holds, in :data:`ARTIFACTS` order:

* ``LAPLACE_STATE`` (laplace_state.pt): :class:`SavedPosterior` - the MAP head, the curvature
  of its variant, the chosen hyperparameters and the head's input clip; ``torch.load`` with
  ``weights_only=True`` reads it (plain tensors, numbers and strings);
* ``LAPLACE_CONFIG`` (laplace_config.yaml): the settings and choices, for a human reader;
* ``VAL_NLL_GRID`` (val_nll_grid.png): the tuning figure (:mod:`laplace_head.bayes.fit_report`);
* ``POSTERIOR_META`` (posterior_meta.json): everything the fit measured (:func:`build_meta`),
  written last, so its presence marks a complete fit.

The file names are :mod:`laplace_head.layout`'s. Readers elsewhere go through
:func:`read_posterior_files`, :func:`read_meta` and :func:`meta_summary`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from laplace_head.bayes.curvature import BlockCurvature
from laplace_head.bayes.jacobian import block_shapes, parameter_vector
from laplace_head.bayes.variant import PosteriorVariant
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import LAPLACE_CONFIG, LAPLACE_STATE, POSTERIOR_META, VAL_NLL_GRID
from laplace_head.model.head import NoImageHead
from laplace_head.util.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_yaml,
    read_json,
    remove_stale_temp_files,
)

FORMAT_VERSION = 2  # the curvature of any variant (bayes.curvature) is saved
ARTIFACTS = (LAPLACE_STATE, LAPLACE_CONFIG, VAL_NLL_GRID, POSTERIOR_META)  # meta last
#: Beside the artifacts, hard links to the last complete fit (see bayes.fit).
REUSE_DIR = ".reuse"
LIKELIHOOD = "classification on two logits [0, z] = per-pixel Bernoulli"
#: The keys of laplace_state.pt a reader needs (``target_layer``, ``approx``, ``backend`` and
#: ``source_checkpoint_md5`` are recorded for a human reader).
REQUIRED_STATE_KEYS = (
    "curvature",
    "mean",
    "head_model_args",
    "head_state",
    "logit_clip",
    "prior_precision",
    "temperature",
)
#: Meta keys that identify a fit's inputs: a fit with the same ones is not redone.
INPUT_KEYS = ("source_checkpoint_md5", "fit_settings", "training_data", "segmenter_fingerprint")
_SELECTIONS = {
    "val_nll": "lowest mean validation pixel NLL over both grids (closed-form probit GLM)",
    "fixed_temperature": "temperature fixed by laplace.fixed_temperature; prior precision "
    "with the lowest validation pixel NLL",
    "marglik": "temperature fixed by laplace.fixed_temperature; prior precision maximising "
    "the Laplace marginal likelihood",
}


class PosteriorLoadError(LaplaceHeadError):
    """A Laplace run folder is missing or holds incomplete / incompatible artifacts."""


@dataclass(frozen=True)
class SavedPosterior:
    """The content of laplace_state.pt.

    ``mean`` is the (n_params,) MAP of the covered parameters in the curvature's block order;
    ``head_model_args`` / ``head_state`` rebuild the MAP head.
    """

    curvature: BlockCurvature
    mean: torch.Tensor
    head_model_args: dict
    head_state: dict
    logit_clip: float
    prior_precision: float
    temperature: float
    source_checkpoint_md5: str | None = None
    output_temperature: float = 1.0  # laplace.output_temperature's tau (1: none)

    @property
    def variant(self) -> PosteriorVariant:
        return self.curvature.variant

    def state(self) -> dict[str, Any]:
        variant = self.variant
        return {
            "format_version": FORMAT_VERSION,
            "curvature": self.curvature.state(),
            "mean": self.mean,
            "head_model_args": dict(self.head_model_args),
            "head_state": self.head_state,
            "logit_clip": float(self.logit_clip),
            "prior_precision": float(self.prior_precision),
            "temperature": float(self.temperature),
            "output_temperature": float(self.output_temperature),
            "target_layer": variant.layer.value,
            "approx": variant.approx.value,
            "backend": variant.backend,
            "source_checkpoint_md5": self.source_checkpoint_md5,
        }


def write_posterior_files(folder: Path, saved: SavedPosterior, meta: Mapping[str, Any]) -> None:
    """Write laplace_state.pt, laplace_config.yaml and, last, posterior_meta.json atomically
    (the figure, :data:`VAL_NLL_GRID`, is the caller's, written before)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / LAPLACE_STATE) as tmp:
        torch.save(saved.state(), tmp)
    atomic_write_yaml(
        folder / LAPLACE_CONFIG,
        {
            "run_id": meta["run_id"],
            "likelihood": meta["likelihood"],
            "backend": meta["backend"],
            "subset_of_weights": meta["subset_of_weights"],
            "hessian_structure": meta["hessian_structure"],
            **meta["fit_settings"],
            "chosen_prior_precision": meta["prior_precision"],
            "chosen_temperature": meta["temperature"],
            "chosen_output_temperature": meta.get("output_temperature", 1.0),
            "source_checkpoint": meta["source_checkpoint"],
        },
    )
    atomic_write_json(folder / POSTERIOR_META, dict(meta))  # last: marks the fit complete


#: What to do about a posterior file that fails a check.
REFIT = "re-run fit_laplace with --force (stage 6) to rewrite it"
#: A stored mean is its head's weights (fit.py checks them to this); a larger gap is an edit.
MEAN_ATOL = 1e-6


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has.

    Raises
    ------
    PosteriorLoadError
        Not a device name, or a CUDA / MPS device on a machine without one.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PosteriorLoadError(
            f"device {device!r} is not a torch device ({exc}); pass 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise PosteriorLoadError(
                f"device {str(device)!r} is not available on this machine ({count} CUDA "
                "device(s)); the posterior files are fine: load them with device='cpu' (or a "
                "CUDA device this machine has)."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PosteriorLoadError(
            f"device {str(device)!r} is not available on this machine; the posterior files "
            "are fine: load them with device='cpu'."
        )
    return device


def _positive_number(state: Mapping[str, Any], key: str, path: Path) -> float:
    value = state[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PosteriorLoadError(
            f"{path}: {key} is a {type(value).__name__}, not a number; {REFIT}."
        )
    if not math.isfinite(value) or value <= 0:
        raise PosteriorLoadError(
            f"{path}: {key} is {value!r}; it must be a finite number > 0. {REFIT}."
        )
    return float(value)


def _finite_tensor(value: Any, what: str, path: Path, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise PosteriorLoadError(
            f"{path}: {what} is a {type(value).__name__}, not a float tensor; {REFIT}."
        )
    if ndim is not None and value.ndim != ndim:
        raise PosteriorLoadError(
            f"{path}: {what} has shape {tuple(value.shape)}, not {ndim} dimensions; {REFIT}."
        )
    if not bool(torch.isfinite(value).all()):
        raise PosteriorLoadError(f"{path}: {what} holds NaN or infinite values; {REFIT}.")
    return value


def _curvature(value: Any, path: Path) -> BlockCurvature:
    try:
        curvature = BlockCurvature.from_state(value)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise PosteriorLoadError(
            f"{path}: its curvature is not a fitted curvature ({type(exc).__name__}: {exc}); "
            f"{REFIT}."
        ) from exc
    for block in curvature.blocks:
        eigenvalues = _finite_tensor(
            block.eigenvalues, f"the eigenvalues of block {block.name!r}", path, ndim=2
        )
        if bool((eigenvalues < 0).any()):
            raise PosteriorLoadError(
                f"{path}: block {block.name!r} has negative eigenvalues (min "
                f"{float(eigenvalues.min()):g}); a curvature is >= 0. {REFIT}."
            )
        for side, rotation, size in (
            ("rot_out", block.rot_out, block.shape[0]),
            ("rot_in", block.rot_in, block.shape[1]),
        ):
            if rotation is None:
                continue
            what = f"{side} of block {block.name!r}"
            _finite_tensor(rotation, what, path, ndim=2)
            if tuple(rotation.shape) != (size, size):
                raise PosteriorLoadError(
                    f"{path}: {what} has shape {tuple(rotation.shape)}, not ({size}, {size}) "
                    f"as its eigenvalues {block.shape} need; {REFIT}."
                )
    return curvature


def read_posterior_files(
    folder: Path, device: str | torch.device = "cpu"
) -> tuple[SavedPosterior, dict]:
    """laplace_state.pt and posterior_meta.json (``{}`` when absent) of a fit's folder, every
    value checked (:func:`check_against_head` checks them against the head they rebuild).

    Raises
    ------
    PosteriorLoadError
        ``device`` is not on this machine (:func:`check_device`); a file is unreadable, lacks
        a key or holds a value no fit writes (NaN, a non-positive hyperparameter, a negative
        eigenvalue, a shape that does not match). The message names the file.
    """
    device = check_device(device)
    path = folder / LAPLACE_STATE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PosteriorLoadError(f"cannot read {path} ({exc}); {REFIT}.") from exc
    if not isinstance(state, dict):
        raise PosteriorLoadError(
            f"{path} holds a {type(state).__name__}, not a posterior state; {REFIT}."
        )
    missing = [key for key in REQUIRED_STATE_KEYS if key not in state]
    if missing:
        raise PosteriorLoadError(
            f"{path} lacks {', '.join(missing)}; it was not written by this version of "
            f"fit_laplace. {REFIT}."
        )
    head_state = state["head_state"]
    if not isinstance(head_state, dict) or not head_state:
        raise PosteriorLoadError(f"{path}: head_state is not a head's state dict; {REFIT}.")
    for name, tensor in head_state.items():
        _finite_tensor(tensor, f"head_state[{name!r}]", path)
    md5 = state.get("source_checkpoint_md5")
    saved = SavedPosterior(
        curvature=_curvature(state["curvature"], path),
        mean=_finite_tensor(state["mean"], "mean", path, ndim=1),
        head_model_args=state["head_model_args"],
        head_state=head_state,
        logit_clip=_positive_number(state, "logit_clip", path),
        prior_precision=_positive_number(state, "prior_precision", path),
        temperature=_positive_number(state, "temperature", path),
        source_checkpoint_md5=md5 if isinstance(md5, str) else None,
        # fits before laplace.output_temperature have none (tau = 1)
        output_temperature=_positive_number(state, "output_temperature", path)
        if "output_temperature" in state
        else 1.0,
    )
    meta_path = folder / POSTERIOR_META
    return saved, read_meta(meta_path) if meta_path.is_file() else {}


def check_against_head(saved: SavedPosterior, head: NoImageHead, path: Path) -> None:
    """The curvature's blocks are the head's (names and shapes of the variant's layer) and
    ``mean`` is the head's weights.

    Raises
    ------
    PosteriorLoadError
        Naming ``path`` (the state file), what disagrees and the fix.
    """
    layer = saved.variant.layer
    expected = [(name, (n_out, n_in)) for name, n_out, n_in in block_shapes(head, layer)]
    found = [(block.name, block.shape) for block in saved.curvature.blocks]
    if found != expected:
        raise PosteriorLoadError(
            f"{path}: the curvature's blocks {found} are not those of its head and layer "
            f"{layer.value!r} ({expected}); {REFIT}."
        )
    weights = parameter_vector(head, layer).double()
    mean = saved.mean.detach().double().to(weights.device)
    if mean.shape != weights.shape:
        raise PosteriorLoadError(
            f"{path}: mean has {mean.numel()} entries, the head's {layer.value!r} parameters "
            f"{weights.numel()}; {REFIT}."
        )
    gap = float((mean - weights).abs().max())
    if gap > MEAN_ATOL:
        raise PosteriorLoadError(
            f"{path}: the head's weights differ from the posterior mean by up to {gap:g}; "
            f"the file was altered or mixed from two fits. {REFIT}."
        )


def complete_fit_meta(folder: Path) -> dict | None:
    """The meta of a complete fit in ``folder`` (every artifact present), else None."""
    if not all((folder / name).is_file() for name in ARTIFACTS):
        return None
    try:
        return read_json(folder / POSTERIOR_META)
    except ValueError:
        return None


def fit_inputs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`INPUT_KEYS` of a meta: best.pt's MD5, the settings, the packed splits and
    their segmenter fingerprint."""
    return {key: meta.get(key) for key in INPUT_KEYS}


def link_artifacts(source: Path, target: Path) -> None:
    """Hard-link (else copy) the artifacts from ``source`` to ``target``, each atomically."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        remove_stale_temp_files(target, [name])
        with atomic_path(target / name) as tmp:
            tmp.unlink()
            try:
                os.link(source / name, tmp)
            except OSError:
                shutil.copy2(source / name, tmp)


def read_meta(path: str | os.PathLike) -> dict:
    """posterior_meta.json, given its path or its fit's folder.

    Raises
    ------
    PosteriorLoadError
        The file is unreadable or not a JSON object; the message names it.
    """
    path = Path(path)
    path = path / POSTERIOR_META if path.is_dir() else path
    try:
        meta = read_json(path)
    except (OSError, ValueError) as exc:
        raise PosteriorLoadError(f"cannot read {path} ({exc}); {REFIT}.") from exc
    if not isinstance(meta, dict):
        raise PosteriorLoadError(
            f"{path} holds a {type(meta).__name__}, not the fit's meta; {REFIT}."
        )
    return meta


def meta_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The variant, its hyperparameters and its validation figures (None where absent)."""
    posterior = meta.get("posterior") or {}
    return {
        "target_layer": posterior.get("target_layer", meta.get("target_layer")),
        "approx": posterior.get("approx"),
        "tuning": posterior.get("tuning"),
        "prior_precision": meta.get("prior_precision"),
        "temperature": meta.get("temperature"),
        "output_temperature": meta.get("output_temperature", 1.0),
        "collapsed_onto_prior": meta.get("collapsed_onto_prior"),
        "val_nll": meta.get("val_nll"),
        "val_nll_map": meta.get("val_nll_map"),
        "val_bald_auroc": meta.get("val_bald_error_auroc"),
        "val_entropy_auroc": meta.get("val_entropy_error_auroc"),
    }


@dataclass(frozen=True)
class FitRecord:
    """What a fit measured, for :func:`build_meta`.

    ``tune``, ``checks`` and ``collapse`` are the reports of :mod:`laplace_head.bayes.tuning`
    (the grid, the chosen pair, the edge warnings; the error-AUROCs; the data-to-prior ratios).
    ``settings`` are the fit's recorded settings, ``data`` the packed splits' fingerprint and
    ``segmenter_fingerprint`` the segmenter fingerprint they record (None: none), all
    :data:`INPUT_KEYS`.
    """

    run_id: str | None
    settings: dict
    data: dict
    curvature: BlockCurvature
    tune: dict
    checks: dict
    collapse: dict
    n_data: int
    n_train_rows: int
    pixels_per_row: int
    pixels_per_row_available: int
    n_val_rows: int
    checkpoint_path: Path
    checkpoint_md5: str
    checkpoint: Mapping[str, Any]
    laplace_torch_version: str
    times: tuple[float, float]
    ggn_diagonal: list[float] | None = None
    segmenter_fingerprint: dict | None = None


def _param_layout(curvature: BlockCurvature) -> list[str]:
    layout = []
    for block in curvature.blocks:
        n_out, n_in = block.shape
        layout += [f"{block.name}[{i}]" for i in range(n_out * n_in)]
    if curvature.variant.is_last_layer:
        layout = layout[:-1] + ["final_conv.bias"]
        layout = [e.replace("final_conv[", "final_conv.weight[") for e in layout]
    return layout


def build_meta(record: FitRecord) -> dict:
    """The content of posterior_meta.json."""
    curvature, tune, checks, collapse = (
        record.curvature,
        record.tune,
        record.checks,
        record.collapse,
    )
    variant, settings = curvature.variant, record.settings
    prior, temperature = tune["prior_precision"], tune["temperature"]
    variance = curvature.marginal_variance(curvature.weights(prior, temperature)).double()
    grid, chosen = tune["grid"], tune["chosen"]
    per_row, n_pixels, n_data = (
        record.pixels_per_row,
        record.pixels_per_row_available,
        record.n_data,
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "run_id": record.run_id,
        "posterior": {
            "target_layer": settings["target_layer"],
            "approx": settings["approx"],
            "subset": variant.subset,
            "structure": variant.hessian_structure,
            "tuning": tune["rule"],
            "fixed_temperature": settings["fixed_temperature"],
        },
        "prior_precision": float(prior),
        "temperature": float(temperature),
        "output_temperature": float(tune["output_temperature"]),
        "val_nll": float(grid["val_nll"][chosen]),
        "val_nll_map": float(grid["map_nll"]),
        "val_nll_improvement_over_map": float(grid["map_nll"] - grid["val_nll"][chosen]),
        "val_bald_error_auroc": checks["bald_error_auroc"],
        "val_entropy_error_auroc": checks["entropy_error_auroc"],
        "val_error_rate": checks["error_rate"],
        "data_to_prior_ratio": collapse["per_block"],
        "collapsed_onto_prior": collapse["collapsed_onto_prior"],
        "selection": _SELECTIONS[tune["rule"]],
        "grid": {
            "prior_precision": tune["priors"],
            "temperature": tune["temperatures"],
            "val_nll": grid["val_nll"].tolist(),
            "output_temperature": tune["output_temperatures"],
            "best_output_temperature": grid["best_output_temperature"].tolist(),
            "mean_logit_variance": grid["mean_logit_variance"].tolist(),
            "chosen_index": [int(chosen[0]), int(chosen[1])],
            **tune["edges"],
        },
        "marglik": tune["marglik"],
        "n_params": curvature.n_params,
        "param_layout": _param_layout(curvature),
        "n_data": n_data,
        "n_train_rows": record.n_train_rows,
        "pixels_per_row": per_row,
        "pixels_per_row_available": n_pixels,
        "pixel_fraction": per_row / n_pixels,
        "subsampled": per_row < n_pixels,
        "effective_observations": n_data / temperature,
        "effective_observations_per_row": per_row / temperature,
        "n_val_rows": record.n_val_rows,
        "n_val_pixels": int(grid["n_pixels"]),
        "source_checkpoint": str(record.checkpoint_path),
        "source_checkpoint_md5": record.checkpoint_md5,
        "source_checkpoint_epoch": record.checkpoint.get("epoch"),
        "source_checkpoint_metrics": record.checkpoint.get("metrics"),
        "laplace_torch_version": record.laplace_torch_version,
        "torch_version": torch.__version__,
        "backend": variant.backend,
        "likelihood": LIKELIHOOD,
        "subset_of_weights": variant.subset_of_weights,
        "hessian_structure": variant.hessian_structure,
        "target_layer": settings["target_layer"],
        "fit_time_s": round(record.times[0], 3),
        "tune_time_s": round(record.times[1], 3),
        "posterior_variance": {
            "min": float(variance.min()),
            "max": float(variance.max()),
            "mean": float(variance.mean()),
            "per_parameter": variance.tolist() if variance.numel() <= 64 else None,
            "mean_logit_variance_val": float(grid["mean_logit_variance"][chosen]),
            "n_params_without_curvature": int(
                sum(int((b.eigenvalues <= 0).sum()) for b in curvature.blocks)
            ),
        },
        "fit_settings": settings,
    }
    if record.ggn_diagonal is not None:
        meta["ggn_diagonal"] = record.ggn_diagonal
    meta["training_data"] = record.data
    meta["segmenter_fingerprint"] = record.segmenter_fingerprint
    return meta
