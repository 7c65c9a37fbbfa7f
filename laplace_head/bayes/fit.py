"""Stage 6: fit, tune and save the last-layer diagonal Laplace posterior of the trained head.

Fit: the exact GGN diagonal of the final conv's 17 parameters over the training pixels (see
:mod:`laplace_head.bayes.layer`), streamed from the packed split, optionally on a seeded
uniform subset of ``max_pixels_fit`` pixels.

Tempering. Pixels of one image are strongly correlated; counted as independent observations,
millions of them make the 17-parameter posterior collapse onto the MAP (validation NLL then
ignores the prior precision). laplace-torch's ``temperature`` T divides the log-likelihood -
and so the GGN - by T: ``precision = H / T + prior_precision``; ``n_data / T`` is the effective
number of independent observations. (prior precision, T) is chosen jointly on validation pixel
NLL (see :mod:`laplace_head.bayes.tuning`); the marginal-likelihood optimum is recorded for
comparison.

Artifacts (the layout's ``laplace_dir``): laplace_state.pt, laplace_config.yaml,
posterior_meta.json (written last) and val_nll_grid.png. A re-run is skipped when they exist,
best.pt has the same MD5, the packed train/val splits are the same (their ``source_index_md5``)
and the settings are unchanged. Snakemake deletes a job's declared outputs before it runs the
job, so the last fit's artifacts are also kept as hard links in ``.reuse/`` beside them (no
extra disk space): a job that Snakemake re-runs on unchanged inputs (e.g. after regenerating a
prompt JSON, see the README) restores them instead of refitting.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from laplace_head.bayes.layer import (
    ASDL_HOOK_WARNING,
    BACKEND_NAME,
    PixelBernoulliLayer,
    PixelFeatureStream,
    import_laplace,
    make_laplace,
    pixels_per_row,
)
from laplace_head.bayes.posterior import CONFIG_NAME, META_NAME, STATE_NAME
from laplace_head.bayes.tuning import (
    edge_report,
    marglik_report,
    posterior_variances,
    validation_nll_grid,
)
from laplace_head.cache.split_h5 import (
    open_split,
    split_fingerprint,
    split_num_rows,
    split_shape,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import VAL_NLL_GRID
from laplace_head.model.head import NoImageHead
from laplace_head.settings import LaplaceSettings
from laplace_head.training.checkpoint import load_head_from_checkpoint
from laplace_head.util.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_yaml,
    file_md5,
    read_json,
    remove_stale_temp_files,
)

LOGGER = logging.getLogger(__name__)
GRID_FIGURE_NAME = VAL_NLL_GRID
FORMAT_VERSION = 1
REUSE_DIR = ".reuse"
ARTIFACTS = (STATE_NAME, CONFIG_NAME, GRID_FIGURE_NAME, META_NAME)  # meta last: marks complete


class LaplaceFitError(LaplaceHeadError):
    """Stage 6 cannot run: bad checkpoint, empty split or invalid settings."""


def _existing_result(folder: Path, checkpoint_md5: str, settings: dict, data: dict) -> dict | None:
    """The meta of a complete fit in ``folder`` made from the same inputs, else None."""
    if not all((folder / name).is_file() for name in ARTIFACTS):
        return None
    try:
        meta = read_json(folder / META_NAME)
    except ValueError:
        return None
    if meta.get("source_checkpoint_md5") != checkpoint_md5:
        LOGGER.info("best.pt changed since the last fit (MD5 differs): refitting")
        return None
    if meta.get("fit_settings") != settings:
        LOGGER.info("Laplace settings changed since the last fit: refitting")
        return None
    if meta.get("training_data") != data:
        LOGGER.info("the packed train/val splits changed since the last fit: refitting")
        return None
    return meta


def _data_fingerprint(train_h5: str | os.PathLike, val_h5: str | os.PathLike) -> dict:
    """What identifies the packed splits a fit used (rows and the MD5 of their index CSV)."""
    fingerprint = {}
    for name, path in (("train", train_h5), ("val", val_h5)):
        with open_split(path) as handle:
            fingerprint[name] = split_fingerprint(handle)
    return fingerprint


def _link_artifacts(source: Path, target: Path) -> None:
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


def fit_laplace(
    checkpoint_path: str | os.PathLike,
    train_h5: str | os.PathLike,
    val_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: LaplaceSettings,
    force: bool = False,
    run_id: str | None = None,
    tracker: Any = None,
) -> dict:
    """Fit, tune and save the last-layer diagonal Laplace posterior of a trained head.

    Parameters
    ----------
    checkpoint_path
        the run's ``best.pt`` (the layout's ``best_checkpoint``).
    train_h5, val_h5
        Packed splits; the fit streams ``batch_rows`` rows at a time.
    out_dir
        the layout's ``laplace_dir``; receives laplace_state.pt, laplace_config.yaml,
        posterior_meta.json and val_nll_grid.png.
    settings
        The grids (tried jointly; the pair with the lowest validation pixel NLL is kept), the
        input logits clip (as in training), ``max_pixels_fit`` (at most this many training
        pixels enter the curvature: a seeded uniform subset of ``max_pixels_fit // n_rows``
        pixels per row; None uses every pixel), the seed, the target layer and approximation.
    force
        Refit even when the artifacts exist for the same best.pt (MD5) and settings.
    tracker
        A :class:`laplace_head.util.tracking.Tracker` (or None) for the grid and the artifacts.

    Returns
    -------
    dict
        The content of posterior_meta.json (also when the fit was skipped).
    """
    prior_precision_grid, temperature_grid = (
        settings.prior_precision_grid,
        settings.temperature_grid,
    )
    logit_clip, max_pixels_fit, seed = settings.logit_clip, settings.max_pixels_fit, settings.seed
    target_layer, approx, batch_rows = settings.target_layer, settings.approx, settings.batch_rows
    if target_layer != "final_conv" or approx != "diagonal":
        raise LaplaceFitError(
            f"laplace.target_layer={target_layer!r}, laplace.approx={approx!r}: only "
            "'final_conv' with 'diagonal' is implemented."
        )
    if not prior_precision_grid or not temperature_grid:
        raise LaplaceFitError("laplace.prior_precision_grid and temperature_grid must be non-empty")
    if min(prior_precision_grid) <= 0 or min(temperature_grid) <= 0:
        raise LaplaceFitError("laplace grids must hold positive numbers only")
    if max_pixels_fit is not None and max_pixels_fit < 1:
        raise LaplaceFitError(f"laplace.max_pixels_fit must be >= 1 or null; got {max_pixels_fit}")
    out_dir, checkpoint_path = Path(out_dir), Path(checkpoint_path)
    head, ckpt = load_head_from_checkpoint(checkpoint_path)
    head.requires_grad_(False)
    checkpoint_md5 = file_md5(checkpoint_path)
    trained_clip = ((ckpt.get("config") or {}).get("training") or {}).get("logit_clip")
    if trained_clip is not None and float(trained_clip) != float(logit_clip):
        LOGGER.warning(
            "best.pt was trained with training.logit_clip=%s; using it instead of %s so the "
            "posterior sees the inputs the head was trained on",
            trained_clip,
            logit_clip,
        )
        logit_clip = float(trained_clip)
    recorded = {
        "prior_precision_grid": [float(v) for v in prior_precision_grid],
        "temperature_grid": [float(v) for v in temperature_grid],
        "logit_clip": float(logit_clip),
        "max_pixels_fit": max_pixels_fit,
        "seed": int(seed),
    }
    data = _data_fingerprint(train_h5, val_h5)
    if not force and (meta := _existing_result(out_dir, checkpoint_md5, recorded, data)):
        LOGGER.info("Laplace artifacts in %s are up to date (same best.pt MD5); skipping", out_dir)
        return meta
    reuse = out_dir / REUSE_DIR
    if not force and (meta := _existing_result(reuse, checkpoint_md5, recorded, data)):
        _link_artifacts(reuse, out_dir)
        LOGGER.info(
            "restored the fit of the same best.pt, data and settings from %s (its outputs had "
            "been deleted, e.g. by Snakemake before re-running the job): no refit",
            reuse,
        )
        return meta

    n_train, height, width = split_shape(train_h5)
    if n_train == 0:
        raise LaplaceFitError(f"training split {train_h5} is empty; nothing to fit.")
    n_pixels = height * width
    per_row = pixels_per_row(n_train, n_pixels, max_pixels_fit)
    stream = PixelFeatureStream(head, Path(train_h5), logit_clip, per_row, seed, batch_rows)
    layer = PixelBernoulliLayer.from_conv(head.final_conv)
    la = make_laplace(layer, prior_precision_grid[0], 1.0)
    LOGGER.info("fitting the GGN on %d rows x %d pixels (%s)", n_train, per_row, BACKEND_NAME)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ASDL_HOOK_WARNING, category=FutureWarning)
        la.fit(DataLoader(stream, batch_size=None))
    fit_time = time.perf_counter() - start

    start = time.perf_counter()
    variances = posterior_variances(la.H, prior_precision_grid, temperature_grid)
    grid = validation_nll_grid(head, la.mean, variances, Path(val_h5), logit_clip, batch_rows)
    nll = grid["val_nll"]
    chosen = np.unravel_index(int(np.argmin(nll)), nll.shape)
    prior, temperature = float(prior_precision_grid[chosen[0]]), float(temperature_grid[chosen[1]])
    edges = edge_report(nll, chosen, prior_precision_grid, temperature_grid)
    marglik = marglik_report(la, prior_precision_grid, temperature_grid, temperature)
    la.prior_precision, la.temperature = prior, temperature
    tune_time = time.perf_counter() - start
    if float(nll[chosen]) >= grid["map_nll"]:
        edges["warnings"].append(
            f"the best Laplace validation NLL ({float(nll[chosen]):.6f}) does not improve on the "
            f"MAP head ({grid['map_nll']:.6f}): the posterior adds no useful spread on this data; "
            "the Laplace head is then the MAP head with a little extra variance."
        )
    for message in edges["warnings"]:
        LOGGER.warning("%s", message)

    meta = _build_meta(
        la,
        ckpt,
        checkpoint_path,
        checkpoint_md5,
        recorded,
        grid,
        chosen,
        edges,
        marglik,
        n_train=n_train,
        n_pixels=n_pixels,
        per_row=per_row,
        run_id=run_id,
        times=(fit_time, tune_time),
        val_rows=split_num_rows(val_h5),
    )
    meta["training_data"] = data
    _write_artifacts(out_dir, la, head, meta, logit_clip)
    _link_artifacts(out_dir, out_dir / REUSE_DIR)
    _track(tracker, meta, out_dir, run_id)
    LOGGER.info(
        "chosen prior precision %g, temperature %g: val NLL %.5f (MAP head %.5f)",
        prior,
        temperature,
        float(nll[chosen]),
        grid["map_nll"],
    )
    return meta


def _build_meta(
    la: Any,
    ckpt: dict,
    checkpoint_path: Path,
    checkpoint_md5: str,
    settings: dict,
    grid: dict,
    chosen: tuple[int, int],
    edges: dict,
    marglik: dict,
    *,
    n_train: int,
    n_pixels: int,
    per_row: int,
    run_id: str | None,
    times: tuple[float, float],
    val_rows: int,
) -> dict:
    laplace, _ = import_laplace()
    variance = la.posterior_variance.double()
    n_data = int(la.n_data)
    temperature = float(la.temperature)
    return {
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "prior_precision": float(la.prior_precision.reshape(-1)[0]),
        "temperature": temperature,
        "val_nll": float(grid["val_nll"][chosen]),
        "val_nll_map": float(grid["map_nll"]),
        "val_nll_improvement_over_map": float(grid["map_nll"] - grid["val_nll"][chosen]),
        "selection": "lowest mean validation pixel NLL, closed-form probit GLM predictive",
        "grid": {
            "prior_precision": settings["prior_precision_grid"],
            "temperature": settings["temperature_grid"],
            "val_nll": grid["val_nll"].tolist(),
            "mean_logit_variance": grid["mean_logit_variance"].tolist(),
            "chosen_index": [int(chosen[0]), int(chosen[1])],
            **edges,
        },
        "marglik": marglik,
        "n_params": int(la.n_params),
        "param_layout": [f"final_conv.weight[{i}]" for i in range(int(la.n_params) - 1)]
        + ["final_conv.bias"],
        "n_data": n_data,
        "n_train_rows": n_train,
        "pixels_per_row": per_row,
        "pixels_per_row_available": n_pixels,
        "pixel_fraction": per_row / n_pixels,
        "subsampled": per_row < n_pixels,
        "effective_observations": n_data / temperature,
        "effective_observations_per_row": per_row / temperature,
        "n_val_rows": val_rows,
        "n_val_pixels": int(grid["n_pixels"]),
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_md5": checkpoint_md5,
        "source_checkpoint_epoch": ckpt.get("epoch"),
        "source_checkpoint_metrics": ckpt.get("metrics"),
        "laplace_torch_version": _package_version("laplace-torch", laplace),
        "torch_version": torch.__version__,
        "backend": BACKEND_NAME,
        "likelihood": "classification on two logits [0, z] = per-pixel Bernoulli",
        "subset_of_weights": "all",
        "hessian_structure": "diag",
        "target_layer": "final_conv",
        "fit_time_s": round(times[0], 3),
        "tune_time_s": round(times[1], 3),
        "posterior_variance": {
            "min": float(variance.min()),
            "max": float(variance.max()),
            "mean": float(variance.mean()),
            "per_parameter": variance.tolist(),
            "mean_logit_variance_val": float(grid["mean_logit_variance"][chosen]),
            "n_params_without_curvature": int((la.H == 0).sum()),
        },
        "ggn_diagonal": la.H.double().tolist(),
        "fit_settings": settings,
    }


def _package_version(distribution: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _write_artifacts(
    out_dir: Path, la: Any, head: NoImageHead, meta: dict, logit_clip: float
) -> None:
    from laplace_head.evaluation.plots import plot_val_nll_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_val_nll_grid(
        np.asarray(meta["grid"]["val_nll"]),
        meta["grid"]["prior_precision"],
        meta["grid"]["temperature"],
        tuple(meta["grid"]["chosen_index"]),
        meta["val_nll_map"],
        out_dir / GRID_FIGURE_NAME,
    )
    state = {
        "format_version": FORMAT_VERSION,
        "laplace_state": la.state_dict(),
        "head_model_args": dict(head.constructor_args),
        "head_state": head.state_dict(),
        "logit_clip": float(logit_clip),
        "prior_precision": meta["prior_precision"],
        "temperature": meta["temperature"],
        "target_layer": "final_conv",
        "backend": BACKEND_NAME,
        "source_checkpoint_md5": meta["source_checkpoint_md5"],
    }
    with atomic_path(out_dir / STATE_NAME) as tmp:
        torch.save(state, tmp)
    atomic_write_yaml(
        out_dir / CONFIG_NAME,
        {
            "run_id": meta["run_id"],
            "target_layer": "final_conv",
            "approx": "diagonal",
            "likelihood": meta["likelihood"],
            "backend": BACKEND_NAME,
            "subset_of_weights": "all",
            "hessian_structure": "diag",
            **meta["fit_settings"],
            "chosen_prior_precision": meta["prior_precision"],
            "chosen_temperature": meta["temperature"],
            "source_checkpoint": meta["source_checkpoint"],
        },
    )
    atomic_write_json(out_dir / META_NAME, meta)  # last: its MD5 marks the fit complete


def _track(tracker: Any, meta: dict, out_dir: Path, run_id: str | None) -> None:
    if tracker is None:
        return
    import pandas as pd

    rows, step = [], 0
    grid = meta["grid"]
    for i, prior in enumerate(grid["prior_precision"]):
        for j, temperature in enumerate(grid["temperature"]):
            row = {
                "prior_precision": prior,
                "temperature": temperature,
                "val_nll": grid["val_nll"][i][j],
                "log_marglik": meta["marglik"]["log_marglik"][i][j],
            }
            tracker.log({f"laplace/{key}": value for key, value in row.items()}, step=step)
            rows.append(row)
            step += 1
    tracker.log_table("laplace/grid", pd.DataFrame(rows))
    tracker.summary(
        {
            "laplace/prior_precision": meta["prior_precision"],
            "laplace/temperature": meta["temperature"],
            "laplace/val_nll": meta["val_nll"],
            "laplace/val_nll_map": meta["val_nll_map"],
            "laplace/prior_at_edge": grid["prior_precision_at_edge"],
            "laplace/temperature_at_edge": grid["temperature_at_edge"],
            "laplace/marglik_prior_precision": meta["marglik"][
                "optimized_prior_precision_at_chosen_temperature"
            ],
        }
    )
    tracker.log_image("laplace/val_nll_grid", out_dir / GRID_FIGURE_NAME)
    tracker.log_artifact(
        out_dir / STATE_NAME, name=f"laplace_{run_id or 'run'}", artifact_type="laplace_posterior"
    )
