"""Stage 6: fit, tune and save the Laplace posterior of the trained head (any variant).

Variants (``laplace.target_layer`` + ``laplace.approx``, :class:`~laplace_head.bayes.variant
.PosteriorVariant`): the final 1x1 conv alone (``final_conv`` + ``diagonal`` / ``full``; on the
frozen trunk features) or every weight of the head (``all`` + ``diagonal`` / ``kron``; on each
pixel's 5x5 input patch). laplace-torch (:mod:`laplace_head.bayes.laplace_torch`) fits the GGN
over the training pixels, streamed from the packed split, optionally on a seeded uniform subset
of ``max_pixels_fit`` pixels; the fitted curvature is kept in the one form of
:mod:`laplace_head.bayes.curvature`.

Tempering. Pixels of one image are strongly correlated; counted as independent observations,
millions of them make the posterior collapse onto the MAP. laplace-torch's ``temperature`` T
divides the GGN by T: ``precision = H / T + prior_precision``; ``n_data / T`` is the effective
number of independent observations. How (prior precision, T) is chosen is ``laplace.tuning``
(:mod:`laplace_head.bayes.tuning`). Whatever the rule, the meta records the data / prior
curvature ratio per parameter block and the validation BALD and entropy error-AUROCs, and the
report (:mod:`laplace_head.bayes.fit_report`) warns when the posterior is its prior or BALD
ranks errors below chance.

Artifacts: those of :mod:`laplace_head.bayes.posterior_io` in the layout's ``laplace_dir``; the
meta also records the segmenter fingerprint of the packed splits (the base segmenter settings
and prompt sigma that made the head's inputs), which the interactive predictor checks. A re-run
is skipped when the artifacts exist, best.pt has the same MD5, the packed train/val splits are
the same (their ``source_index_md5`` and segmenter fingerprint) and the settings are unchanged.
Snakemake deletes a job's declared outputs before it runs the job, so the last fit's artifacts
are also kept as hard links in ``.reuse/`` beside them (no extra disk space): a job that
Snakemake re-runs on unchanged inputs (e.g. after regenerating a prompt JSON, see the README)
restores them instead of refitting.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laplace_head.bayes.curvature import BlockCurvature
from laplace_head.bayes.fit_report import (
    health_warnings,
    log_summary,
    track,
    write_grid_figure,
)
from laplace_head.bayes.jacobian import block_shapes, parameter_vector
from laplace_head.bayes.laplace_torch import (
    curvature_from_laplace,
    fit_laplace_model,
    laplace_model,
    laplace_torch_version,
    make_laplace,
)
from laplace_head.bayes.pixels import PixelStream, pixels_per_row
from laplace_head.bayes.posterior_io import (
    ARTIFACTS,
    REUSE_DIR,
    FitRecord,
    SavedPosterior,
    build_meta,
    complete_fit_meta,
    fit_inputs,
    link_artifacts,
    write_posterior_files,
)
from laplace_head.bayes.tuning import (
    OUTPUT_TEMPERATURE_GRID,
    TUNING_RULES,
    ValidationPass,
    collapse_report,
    edge_report,
    marglik_report,
    resolve_temperature,
    validation_error_aurocs,
    validation_nll_grid,
)
from laplace_head.bayes.variant import Approx, PosteriorVariant
from laplace_head.cache.split_h5 import (
    open_split,
    read_segmenter_fingerprint,
    require_head,
    split_fingerprint,
    split_num_rows,
    split_shape,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.settings import (
    LaplaceSettings,
    posterior_variant_problem,
    segmenter_fingerprint_differences,
)
from laplace_head.training.checkpoint import load_head_from_checkpoint
from laplace_head.util.atomic import file_md5

LOGGER = logging.getLogger(__name__)
__all__ = ["ARTIFACTS", "LaplaceFitError", "fit_laplace"]
#: Why a fit's recorded inputs differ from this one's (keys of posterior_io.INPUT_KEYS).
_CHANGED = {
    "source_checkpoint_md5": "best.pt changed since the last fit (MD5 differs): refitting",
    "fit_settings": "Laplace settings changed since the last fit: refitting",
    "training_data": "the packed train/val splits changed since the last fit: refitting",
    "segmenter_fingerprint": "the splits' segmenter fingerprint changed since the last fit: "
    "refitting",
}


class LaplaceFitError(LaplaceHeadError):
    """Stage 6 cannot run: bad checkpoint, empty split or invalid settings."""


@dataclass
class FittedCurvature:
    """The laplace-torch fit of a variant on the training pixels."""

    la: Any
    curvature: BlockCurvature
    mean: torch.Tensor  # (n_params,) float64 MAP, the curvature's block order
    n_rows: int
    n_pixels: int  # per row
    per_row: int  # pixels of each row in the fit
    fit_time: float


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
    """Fit, tune and save the Laplace posterior of a trained head (the variant of ``settings``).

    Parameters
    ----------
    checkpoint_path
        the run's ``best.pt`` (the layout's ``best_checkpoint``).
    train_h5, val_h5
        Packed splits; the fit streams ``batch_rows`` rows at a time.
    out_dir
        the layout's ``laplace_dir``; receives the artifacts of
        :mod:`laplace_head.bayes.posterior_io`.
    settings
        The grids and the tuning rule, the input logits clip (it must be the one best.pt was
        trained with), ``max_pixels_fit`` (at most this many training pixels enter the
        curvature: a seeded uniform subset of ``max_pixels_fit // n_rows`` pixels per row; None
        uses every pixel), the seed, the target layer and approximation.
    force
        Refit even when the artifacts exist for the same best.pt (MD5), data and settings.
    tracker
        A :class:`laplace_head.util.tracking.Tracker` (or None) for the grid and the artifacts.

    Returns
    -------
    dict
        The content of posterior_meta.json (also when the fit was skipped).
    """
    variant = _check_settings(settings)
    out_dir, checkpoint_path = Path(out_dir), Path(checkpoint_path)
    head, ckpt = load_head_from_checkpoint(checkpoint_path)
    head.requires_grad_(False)
    _check_logit_clip(ckpt, settings.logit_clip, checkpoint_path)
    for split_h5 in (train_h5, val_h5):
        head_variant = require_head(split_h5, head.channels_in, f"the head of {checkpoint_path}")
    inputs = {
        "source_checkpoint_md5": file_md5(checkpoint_path),
        "fit_settings": _recorded_settings(settings),
        "training_data": _data_fingerprint(train_h5, val_h5),
        "segmenter_fingerprint": _segmenter_fingerprint(train_h5, val_h5),
    }
    if not force and (meta := _reusable_fit(out_dir, inputs)) is not None:
        return meta

    fitted = _fit_curvature(head, variant, settings, Path(train_h5))
    tune, checks, collapse, tune_time = _tune_and_check(head, fitted, settings, Path(val_h5))
    last_layer_diagonal = variant == PosteriorVariant("final_conv", Approx.DIAGONAL)
    meta = build_meta(
        FitRecord(
            run_id=run_id,
            settings=inputs["fit_settings"],
            data=inputs["training_data"],
            segmenter_fingerprint=inputs["segmenter_fingerprint"],
            curvature=fitted.curvature,
            tune=tune,
            checks=checks,
            collapse=collapse,
            n_data=int(fitted.la.n_data),
            n_train_rows=fitted.n_rows,
            pixels_per_row=fitted.per_row,
            pixels_per_row_available=fitted.n_pixels,
            n_val_rows=split_num_rows(val_h5),
            checkpoint_path=checkpoint_path,
            checkpoint_md5=inputs["source_checkpoint_md5"],
            checkpoint=ckpt,
            laplace_torch_version=laplace_torch_version(),
            times=(fitted.fit_time, tune_time),
            ggn_diagonal=fitted.la.H.double().tolist() if last_layer_diagonal else None,
        )
    )
    meta["head"] = head_variant.value  # the posterior records its head (HeadVariant)
    write_grid_figure(out_dir, meta)
    saved = SavedPosterior(
        curvature=fitted.curvature,
        mean=fitted.mean,
        head_model_args=dict(head.constructor_args),
        head_state=head.state_dict(),
        logit_clip=settings.logit_clip,
        prior_precision=meta["prior_precision"],
        temperature=meta["temperature"],
        source_checkpoint_md5=meta["source_checkpoint_md5"],
        output_temperature=meta["output_temperature"],
    )
    write_posterior_files(out_dir, saved, meta)
    link_artifacts(out_dir, out_dir / REUSE_DIR)
    track(tracker, meta, out_dir, run_id)
    log_summary(meta)
    return meta


def _check_settings(settings: LaplaceSettings) -> PosteriorVariant:
    """Validate the posterior's settings; its variant."""
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
    return settings.variant


def _check_logit_clip(ckpt: dict, logit_clip: float, checkpoint_path: Path) -> None:
    """Refuse a logit clip other than the one the head was trained with.

    The posterior is a posterior of the head on its training inputs: fitting or predicting
    with another clip would describe a different model. The clip reaches the fit through the
    settings (a rerun trigger) and is recorded in best.pt; in the workflow both come from
    ``training.logit_clip``, so a disagreement means a best.pt trained under another config.
    """
    trained = ((ckpt.get("config") or {}).get("training") or {}).get("logit_clip")
    if trained is not None and float(trained) != float(logit_clip):
        raise LaplaceFitError(
            f"{checkpoint_path} was trained with training.logit_clip={trained}, but the fit "
            f"was given logit_clip={logit_clip}: the posterior must see the inputs the head "
            f"was trained on. Set training.logit_clip: {trained} (or retrain the head)."
        )


def _recorded_settings(settings: LaplaceSettings) -> dict[str, Any]:
    """The settings a fit records (and compares to skip a refit)."""
    return {
        "target_layer": settings.variant.layer.value,
        "approx": settings.variant.approx.value,
        "tuning": settings.tuning,
        "fixed_temperature": settings.fixed_temperature,
        "prior_precision_grid": [float(v) for v in settings.prior_precision_grid],
        "temperature_grid": [float(v) for v in settings.temperature_grid],
        "logit_clip": float(settings.logit_clip),
        "max_pixels_fit": settings.max_pixels_fit,
        "max_pixels_tune": settings.max_pixels_tune,
        "output_temperature": bool(settings.output_temperature),
        "seed": int(settings.seed),
    }


def _data_fingerprint(train_h5: str | os.PathLike, val_h5: str | os.PathLike) -> dict:
    """What identifies the packed splits a fit used (rows and the MD5 of their index CSV)."""
    fingerprint = {}
    for name, path in (("train", train_h5), ("val", val_h5)):
        with open_split(path) as handle:
            fingerprint[name] = split_fingerprint(handle)
    return fingerprint


def _segmenter_fingerprint(train_h5: str | os.PathLike, val_h5: str | os.PathLike) -> dict | None:
    """The segmenter fingerprint both packed splits record (None when neither records one).

    Raises
    ------
    LaplaceFitError
        The two splits record different fingerprints (or only one records one).
    """
    fingerprints = {}
    for name, path in (("train", train_h5), ("val", val_h5)):
        with open_split(path) as handle:
            fingerprints[name] = read_segmenter_fingerprint(handle)
    train, val = fingerprints["train"], fingerprints["val"]
    if train != val:
        differences = segmenter_fingerprint_differences(train or {}, val or {})
        listed = "; ".join(f"{key}: train {a!r}, val {b!r}" for key, (a, b) in differences.items())
        raise LaplaceFitError(
            f"the packed splits {train_h5} and {val_h5} were made by different base segmenter "
            f"settings ({listed}); re-run precompute_sam and pack_hdf5 for both with one config."
        )
    return train


def _same_inputs(folder: Path, inputs: dict) -> dict | None:
    """The meta of a complete fit in ``folder`` made from ``inputs``, else None."""
    meta = complete_fit_meta(folder)
    if meta is None:
        return None
    recorded = fit_inputs(meta)
    for key, reason in _CHANGED.items():
        if recorded[key] != inputs[key]:
            LOGGER.info("%s", reason)
            return None
    return meta


def _reusable_fit(out_dir: Path, inputs: dict) -> dict | None:
    """The meta of a fit of the same inputs in ``out_dir``, or restored from its ``.reuse/``."""
    if (meta := _same_inputs(out_dir, inputs)) is not None:
        LOGGER.info("Laplace artifacts in %s are up to date (same best.pt MD5); skipping", out_dir)
        return meta
    reuse = out_dir / REUSE_DIR
    if (meta := _same_inputs(reuse, inputs)) is not None:
        link_artifacts(reuse, out_dir)
        LOGGER.info(
            "restored the fit of the same best.pt, data and settings from %s (its outputs had "
            "been deleted, e.g. by Snakemake before re-running the job): no refit",
            reuse,
        )
    return meta


def _fit_curvature(
    head: NoImageHead, variant: PosteriorVariant, settings: LaplaceSettings, train_h5: Path
) -> FittedCurvature:
    """laplace-torch's GGN of ``variant`` over the (capped) training pixels."""
    n_rows, height, width = split_shape(train_h5)
    if n_rows == 0:
        raise LaplaceFitError(f"training split {train_h5} is empty; nothing to fit.")
    n_pixels = height * width
    per_row = pixels_per_row(n_rows, n_pixels, settings.max_pixels_fit)
    model, per_pixel = laplace_model(head, variant)
    stream = PixelStream(
        per_pixel, train_h5, settings.logit_clip, per_row, settings.seed, settings.batch_rows
    )
    la = make_laplace(model, variant, settings.prior_precision_grid[0], 1.0)
    LOGGER.info(
        "fitting the %s GGN of %s on %d rows x %d pixels (%s)",
        variant.hessian_structure,
        variant.subset,
        n_rows,
        per_row,
        variant.backend,
    )
    start = time.perf_counter()
    fit_laplace_model(la, stream)
    fit_time = time.perf_counter() - start
    curvature = curvature_from_laplace(la, variant, block_shapes(head, variant.layer))
    mean = parameter_vector(head, variant.layer).double()
    if not torch.allclose(la.mean.detach().double().cpu(), mean, rtol=0, atol=1e-6):
        raise LaplaceFitError("laplace-torch's parameter vector does not match the head's (bug)")
    return FittedCurvature(la, curvature, mean, n_rows, n_pixels, per_row, fit_time)


def _tune_and_check(
    head: NoImageHead, fitted: FittedCurvature, settings: LaplaceSettings, val_h5: Path
) -> tuple[dict, dict, dict, float]:
    """Choose (prior precision, temperature) on the validation split and check the chosen
    posterior: the tuning report (its warnings logged), the error-AUROCs, the data-to-prior
    ratios and the seconds it took."""
    start = time.perf_counter()
    data = ValidationPass(
        head,
        fitted.curvature,
        val_h5,
        settings.logit_clip,
        settings.batch_rows,
        settings.max_pixels_tune,
        settings.seed,
    )
    tune = _tune(fitted.la, data, settings, fitted.per_row)
    prior, temperature = tune["prior_precision"], tune["temperature"]
    checks = validation_error_aurocs(data, prior, temperature, tune["output_temperature"])
    collapse = collapse_report(fitted.curvature, prior, temperature)
    tune_time = time.perf_counter() - start
    tune["edges"]["warnings"].extend(health_warnings(tune, checks, collapse))
    for message in tune["edges"]["warnings"]:
        LOGGER.warning("%s", message)
    return tune, checks, collapse, tune_time


def _tune(la: Any, data: ValidationPass, settings: LaplaceSettings, per_row: int) -> dict[str, Any]:
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
    taus = OUTPUT_TEMPERATURE_GRID if settings.output_temperature else (1.0,)
    grid = validation_nll_grid(data, priors, temperatures, taus)
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
    tau = float(grid["best_output_temperature"][chosen])
    if settings.output_temperature and tau in (taus[0], taus[-1]):
        edges["warnings"].append(
            f"the output temperature {tau:g} is at an edge of its grid [{taus[0]:g}, "
            f"{taus[-1]:g}]: the head's logits are far off calibration on validation."
        )
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
        "output_temperature": tau,
        "output_temperatures": [float(t) for t in taus],
        "priors": priors,
        "temperatures": temperatures,
        "grid": grid,
        "chosen": chosen,
        "edges": edges,
        "marglik": marglik,
    }
