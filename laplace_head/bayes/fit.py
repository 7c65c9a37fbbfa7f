"""Stage 6: fit, tune and save the Laplace posterior of the trained head (any variant).

Variants (``laplace.target_layer`` + ``laplace.approx``, :data:`VARIANTS`): the final 1x1 conv
alone (``final_conv`` + ``diagonal`` / ``full``; :class:`~laplace_head.bayes.layer
.PixelBernoulliLayer` on the frozen trunk features) or every weight of the head (``all`` +
``diagonal`` / ``kron``; :class:`~laplace_head.bayes.layer.PatchHead` on each pixel's 5x5
input patch). laplace-torch fits the GGN over the training pixels, streamed from the packed
split, optionally on a seeded uniform subset of ``max_pixels_fit`` pixels; the fitted
curvature is kept in the one form of :mod:`laplace_head.bayes.curvature`.

Tempering. Pixels of one image are strongly correlated; counted as independent observations,
millions of them make the posterior collapse onto the MAP. laplace-torch's ``temperature`` T
divides the GGN by T: ``precision = H / T + prior_precision``; ``n_data / T`` is the effective
number of independent observations. How (prior precision, T) is chosen is ``laplace.tuning``
(:mod:`laplace_head.bayes.tuning`). Whatever the rule, posterior_meta.json records the data /
prior curvature ratio per parameter block, the validation BALD and entropy error-AUROCs, and
warns when the posterior is its prior or BALD ranks errors below chance.

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

from laplace_head.bayes.curvature import BlockCurvature, curvature_from_laplace
from laplace_head.bayes.jacobian import block_shapes, parameter_vector
from laplace_head.bayes.layer import (
    ASDL_HOOK_WARNING,
    HESSIAN_STRUCTURES,
    PatchHead,
    PixelBernoulliLayer,
    PixelFeatureStream,
    PixelPatchStream,
    backend_name,
    import_laplace,
    make_laplace,
    pixels_per_row,
)
from laplace_head.bayes.posterior import CONFIG_NAME, META_NAME, STATE_NAME
from laplace_head.bayes.tuning import (
    COLLAPSE_RATIO,
    TUNING_RULES,
    collapse_report,
    edge_report,
    marglik_report,
    resolve_temperature,
    validation_error_aurocs,
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
from laplace_head.settings import POSTERIOR_VARIANTS, LaplaceSettings, posterior_variant_problem
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
FORMAT_VERSION = 2  # 2: the curvature of any variant (bayes.curvature) is saved
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
    subset = _check_settings(settings)
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
        "target_layer": target_layer,
        "approx": approx,
        "tuning": settings.tuning,
        "fixed_temperature": settings.fixed_temperature,
        "prior_precision_grid": [float(v) for v in prior_precision_grid],
        "temperature_grid": [float(v) for v in temperature_grid],
        "logit_clip": float(logit_clip),
        "max_pixels_fit": max_pixels_fit,
        "max_pixels_tune": settings.max_pixels_tune,
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
    backend = backend_name(target_layer, approx)
    if subset == "last_layer":
        stream = PixelFeatureStream(head, Path(train_h5), logit_clip, per_row, seed, batch_rows)
        model = PixelBernoulliLayer.from_conv(head.final_conv)
    else:
        stream = PixelPatchStream(head, Path(train_h5), logit_clip, per_row, seed, batch_rows)
        model = PatchHead(head)
    la = make_laplace(model, prior_precision_grid[0], 1.0, approx, backend)
    LOGGER.info(
        "fitting the %s GGN of %s on %d rows x %d pixels (%s)",
        HESSIAN_STRUCTURES[approx],
        subset,
        n_train,
        per_row,
        backend,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ASDL_HOOK_WARNING, category=FutureWarning)
        la.fit(DataLoader(stream, batch_size=None))
    fit_time = time.perf_counter() - start
    shapes = block_shapes(head, subset)
    curvature = curvature_from_laplace(la, subset, HESSIAN_STRUCTURES[approx], shapes)
    mean = parameter_vector(head, subset).double()
    if not torch.allclose(la.mean.detach().double().cpu(), mean, rtol=0, atol=1e-6):
        raise LaplaceFitError("laplace-torch's parameter vector does not match the head's (bug)")

    start = time.perf_counter()
    tune = _tune(la, head, curvature, settings, Path(val_h5), logit_clip, per_row)
    prior, temperature = tune["prior_precision"], tune["temperature"]
    checks = validation_error_aurocs(
        head,
        curvature,
        prior,
        temperature,
        Path(val_h5),
        logit_clip,
        batch_rows,
        settings.max_pixels_tune,
        seed,
    )
    collapse = collapse_report(curvature, prior, temperature)
    tune_time = time.perf_counter() - start
    tune["edges"]["warnings"].extend(_health_warnings(tune, checks, collapse))
    for message in tune["edges"]["warnings"]:
        LOGGER.warning("%s", message)

    meta = _build_meta(
        la,
        curvature,
        ckpt,
        checkpoint_path,
        checkpoint_md5,
        recorded,
        tune,
        checks,
        collapse,
        backend=backend,
        n_train=n_train,
        n_pixels=n_pixels,
        per_row=per_row,
        run_id=run_id,
        times=(fit_time, tune_time),
        val_rows=split_num_rows(val_h5),
    )
    meta["training_data"] = data
    _write_artifacts(out_dir, la, curvature, mean, head, meta, logit_clip)
    _link_artifacts(out_dir, out_dir / REUSE_DIR)
    _track(tracker, meta, out_dir, run_id)
    LOGGER.info(
        "%s/%s, tuning %s: prior precision %g, temperature %g: val NLL %.5f (MAP head %.5f), "
        "val BALD error-AUROC %.3f",
        target_layer,
        approx,
        settings.tuning,
        prior,
        temperature,
        meta["val_nll"],
        meta["val_nll_map"],
        checks["bald_error_auroc"] if checks["bald_error_auroc"] is not None else float("nan"),
    )
    return meta


def _check_settings(settings: LaplaceSettings) -> str:
    """Validate the posterior's settings; the parameter subset it covers."""
    problem = posterior_variant_problem(
        {
            "target_layer": settings.target_layer,
            "approx": settings.approx,
            "fixed_temperature": settings.fixed_temperature,
        }
    )
    if problem:
        raise LaplaceFitError(f"laplace.{problem}")
    if settings.tuning not in TUNING_RULES:
        raise LaplaceFitError(
            f"laplace.tuning={settings.tuning!r}; valid: {', '.join(TUNING_RULES)}"
        )
    if not settings.prior_precision_grid or not settings.temperature_grid:
        raise LaplaceFitError("laplace.prior_precision_grid and temperature_grid must be non-empty")
    if min(settings.prior_precision_grid) <= 0 or min(settings.temperature_grid) <= 0:
        raise LaplaceFitError("laplace grids must hold positive numbers only")
    for name in ("max_pixels_fit", "max_pixels_tune"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise LaplaceFitError(f"laplace.{name} must be >= 1 or null; got {value}")
    return POSTERIOR_VARIANTS[(settings.target_layer, settings.approx)]


def _tune(
    la: Any,
    head: NoImageHead,
    curvature: BlockCurvature,
    settings: LaplaceSettings,
    val_h5: Path,
    logit_clip: float,
    per_row: int,
) -> dict[str, Any]:
    """(prior precision, temperature) by ``settings.tuning``, with the validation NLL grid."""
    priors = [float(v) for v in settings.prior_precision_grid]
    temperatures = [float(v) for v in settings.temperature_grid]
    fixed = resolve_temperature(settings.fixed_temperature, per_row)
    if settings.tuning != "val_nll":
        temperatures = [fixed]
    marglik = marglik_report(la, priors, temperatures, temperatures[0])
    if settings.tuning == "marglik":
        optimum = marglik["optimized_prior_precision_at_chosen_temperature"]
        priors = sorted({*priors, optimum})
    grid = validation_nll_grid(
        head,
        curvature,
        priors,
        temperatures,
        val_h5,
        logit_clip,
        settings.batch_rows,
        settings.max_pixels_tune,
        settings.seed,
    )
    nll = grid["val_nll"]
    if settings.tuning == "marglik":
        chosen = (priors.index(optimum), 0)
    else:
        chosen = tuple(int(i) for i in np.unravel_index(int(np.argmin(nll)), nll.shape))
    edges = edge_report(nll, chosen, priors, temperatures)
    if settings.tuning == "marglik":  # the prior is not chosen on the grid: no edge to report
        edges["warnings"] = [w for w in edges["warnings"] if "prior_precision" not in w]
        edges["prior_precision_at_edge"] = False
    prior, temperature = priors[chosen[0]], temperatures[chosen[1]]
    if settings.tuning != "val_nll":
        marglik["note"] = (
            f"temperature fixed by laplace.fixed_temperature={settings.fixed_temperature!r} "
            f"(= {fixed:g}); the prior precision is the "
            + (
                "marginal-likelihood optimum."
                if settings.tuning == "marglik"
                else "validation-NLL optimum; marglik is reported for comparison."
            )
        )
    la.prior_precision, la.temperature = prior, temperature
    return {
        "rule": settings.tuning,
        "prior_precision": prior,
        "temperature": temperature,
        "priors": priors,
        "temperatures": temperatures,
        "grid": grid,
        "chosen": chosen,
        "edges": edges,
        "marglik": marglik,
    }


def _collapse_advice(tune: dict) -> str:
    """What to change when the posterior is its prior, for the tuning rule that chose it."""
    prior, temperature = tune["prior_precision"], tune["temperature"]
    if tune["rule"] == "val_nll":
        return (
            f"Validation NLL chose T = {temperature:g}: use laplace.tuning: fixed_temperature "
            "(or marglik), or a smaller temperature_grid."
        )
    if tune["rule"] == "fixed_temperature":
        return (
            f"At the fixed T = {temperature:g}, validation NLL chose the prior precision "
            f"{prior:g}; a smaller one (cap laplace.prior_precision_grid below {prior:g}) or a "
            "smaller laplace.fixed_temperature lets the data shape the covariance, at the "
            "validation-NLL cost val_nll_grid.png shows."
        )
    return (
        f"The marginal likelihood chose the prior precision {prior:g} at T = {temperature:g}: "
        "set a smaller laplace.fixed_temperature."
    )


def _health_warnings(tune: dict, checks: dict, collapse: dict) -> list[str]:
    """Warnings for a posterior that is its prior, flags errors below chance or lowers no NLL."""
    messages = []
    grid, chosen = tune["grid"], tune["chosen"]
    best = float(grid["val_nll"][chosen])
    if best >= grid["map_nll"]:
        messages.append(
            f"the Laplace validation NLL ({best:.6f}) does not improve on the MAP head "
            f"({grid['map_nll']:.6f}): the posterior adds no useful spread on this data."
        )
    if collapse["collapsed_onto_prior"]:
        ratios = ", ".join(f"{k} {v['mean']:.3g}" for k, v in collapse["per_block"].items())
        messages.append(
            "the posterior has collapsed onto its prior: the tempered data curvature is below "
            f"{COLLAPSE_RATIO:g} x the prior precision in every block ({ratios}), so every "
            "posterior variance is within a few percent of 1 / prior_precision and BALD tracks "
            f"the feature norm, not the data. {_collapse_advice(tune)}"
        )
    auroc = checks["bald_error_auroc"]
    if auroc is not None and auroc < 0.5:
        messages.append(
            f"validation BALD error-AUROC is {auroc:.3f} < 0.5: the epistemic uncertainty is "
            "anti-correlated with the predictive mask's errors, so clicking where BALD is high "
            "targets pixels that are already right. Try laplace.approx full or kron."
        )
    return messages


def _build_meta(
    la: Any,
    curvature: BlockCurvature,
    ckpt: dict,
    checkpoint_path: Path,
    checkpoint_md5: str,
    settings: dict,
    tune: dict,
    checks: dict,
    collapse: dict,
    *,
    backend: str,
    n_train: int,
    n_pixels: int,
    per_row: int,
    run_id: str | None,
    times: tuple[float, float],
    val_rows: int,
) -> dict:
    laplace, _ = import_laplace()
    prior, temperature = tune["prior_precision"], tune["temperature"]
    variance = curvature.marginal_variance(curvature.weights(prior, temperature)).double()
    grid, chosen = tune["grid"], tune["chosen"]
    n_data = int(la.n_data)
    layout = []
    for name, n_out, n_in in block_shapes_of(curvature):
        layout += [f"{name}[{i}]" for i in range(n_out * n_in)]
    if curvature.subset == "last_layer":
        layout = layout[:-1] + ["final_conv.bias"]
        layout = [e.replace("final_conv[", "final_conv.weight[") for e in layout]
    selection = {
        "val_nll": "lowest mean validation pixel NLL over both grids (closed-form probit GLM)",
        "fixed_temperature": "temperature fixed by laplace.fixed_temperature; prior precision "
        "with the lowest validation pixel NLL",
        "marglik": "temperature fixed by laplace.fixed_temperature; prior precision maximising "
        "the Laplace marginal likelihood",
    }[tune["rule"]]
    meta = {
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "posterior": {
            "target_layer": settings["target_layer"],
            "approx": settings["approx"],
            "subset": curvature.subset,
            "structure": curvature.structure,
            "tuning": tune["rule"],
            "fixed_temperature": settings["fixed_temperature"],
        },
        "prior_precision": float(prior),
        "temperature": float(temperature),
        "val_nll": float(grid["val_nll"][chosen]),
        "val_nll_map": float(grid["map_nll"]),
        "val_nll_improvement_over_map": float(grid["map_nll"] - grid["val_nll"][chosen]),
        "val_bald_error_auroc": checks["bald_error_auroc"],
        "val_entropy_error_auroc": checks["entropy_error_auroc"],
        "val_error_rate": checks["error_rate"],
        "data_to_prior_ratio": collapse["per_block"],
        "collapsed_onto_prior": collapse["collapsed_onto_prior"],
        "selection": selection,
        "grid": {
            "prior_precision": tune["priors"],
            "temperature": tune["temperatures"],
            "val_nll": grid["val_nll"].tolist(),
            "mean_logit_variance": grid["mean_logit_variance"].tolist(),
            "chosen_index": [int(chosen[0]), int(chosen[1])],
            **tune["edges"],
        },
        "marglik": tune["marglik"],
        "n_params": curvature.n_params,
        "param_layout": layout,
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
        "backend": backend,
        "likelihood": "classification on two logits [0, z] = per-pixel Bernoulli",
        "subset_of_weights": "all",
        "hessian_structure": curvature.structure,
        "target_layer": settings["target_layer"],
        "fit_time_s": round(times[0], 3),
        "tune_time_s": round(times[1], 3),
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
    if curvature.structure == "diag" and curvature.subset == "last_layer":
        meta["ggn_diagonal"] = la.H.double().tolist()
    return meta


def block_shapes_of(curvature: BlockCurvature) -> list[tuple[str, int, int]]:
    """(name, out, in) of the curvature's blocks."""
    return [(b.name, *b.shape) for b in curvature.blocks]


def _package_version(distribution: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _write_artifacts(
    out_dir: Path,
    la: Any,
    curvature: BlockCurvature,
    mean: torch.Tensor,
    head: NoImageHead,
    meta: dict,
    logit_clip: float,
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
        "curvature": curvature.state(),
        "mean": mean,
        "head_model_args": dict(head.constructor_args),
        "head_state": head.state_dict(),
        "logit_clip": float(logit_clip),
        "prior_precision": meta["prior_precision"],
        "temperature": meta["temperature"],
        "target_layer": meta["target_layer"],
        "approx": meta["posterior"]["approx"],
        "backend": meta["backend"],
        "source_checkpoint_md5": meta["source_checkpoint_md5"],
    }
    if curvature.subset == "last_layer" and curvature.structure == "diag":
        state["laplace_state"] = la.state_dict()  # rebuildable as a laplace-torch DiagLaplace
    with atomic_path(out_dir / STATE_NAME) as tmp:
        torch.save(state, tmp)
    atomic_write_yaml(
        out_dir / CONFIG_NAME,
        {
            "run_id": meta["run_id"],
            "likelihood": meta["likelihood"],
            "backend": meta["backend"],
            "subset_of_weights": "all",
            "hessian_structure": meta["hessian_structure"],
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
    marglik = meta["marglik"]["log_marglik"]
    for i, prior in enumerate(grid["prior_precision"]):
        for j, temperature in enumerate(grid["temperature"]):
            row = {
                "prior_precision": prior,
                "temperature": temperature,
                "val_nll": grid["val_nll"][i][j],
            }
            if len(marglik) == len(grid["prior_precision"]):  # marglik tuning adds a prior
                row["log_marglik"] = marglik[i][j]
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
            "laplace/val_bald_error_auroc": meta["val_bald_error_auroc"],
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
