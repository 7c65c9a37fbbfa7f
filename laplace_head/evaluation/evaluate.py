"""Stage 7: calibration and accuracy of four predictors on the test split, streamed.

Methods (each gives an *effective logit* l per pixel, p = sigmoid(l)):

* ``base`` - the base segmenter's raw logits_256 as stored (not clipped);
* ``map`` - the trained head (MAP weights);
* ``map_temperature_scaled`` - MAP logits divided by one temperature fitted on validation NLL
  (the honest calibration baseline: one scalar, same data as the Laplace tuning);
* ``laplace`` - the probit GLM predictive of the Laplace head, ``z / sqrt(1 + pi var(z) / 8)``
  of its logit ``z / tau`` (``tau`` = 1 unless ``laplace.output_temperature`` fitted one).

Metrics, overall and per class (the index's ``class`` column; classes live in their own
namespace - ``per_class`` in metrics.json, ``class:<name>`` scopes in metrics.csv/md - so no class
name, ``overall`` included, can collide with the overall scope): per-image mean IoU and Dice of
``p > 0.5`` (see :mod:`laplace_head.model.metrics`), mean pixel NLL (nats), Brier score, ECE over
``ece_bins`` equal-width bins of the foreground probability (sum over bins of
``n_bin / n * |mean p - fraction foreground|``), and the AUROC of a per-pixel uncertainty for
detecting misclassified pixels: the predictive entropy for every method, plus the BALD
(mutual information of the Gaussian GLM logit, by quadrature - no sampling noise, the same for
every posterior variant) for the Laplace head. The example panels show the same quadrature maps
and the next clicks the ``bald_region`` rule of :mod:`laplace_head.interactive.clicks` suggests
from them (:func:`~laplace_head.interactive.predictor.suggest_for_inputs`, each labelled with the
class the posterior predicts there, the label the click most likely gets). AUROCs are computed
from fine histograms (log-scale bins), so memory stays bounded for any split size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from laplace_head.bayes.posterior import Posterior, load_posterior, probit_logits
from laplace_head.bayes.predictive import gaussian_logit_uncertainty
from laplace_head.cache.split_h5 import iter_split_batches
from laplace_head.errors import LaplaceHeadError
from laplace_head.evaluation.active_prompting import (
    HEAD_VS_BASE_IOU,
    bootstrap_draws,
    ci95,
    paired_comparison,
)
from laplace_head.evaluation.calibration import (
    CalibrationAccumulator,
    batch_statistics,
    expected_calibration_error,
    fit_temperature_scaling,
    log_uncertainty,
    row_calibration,
)
from laplace_head.interactive.clicks import PolicySettings
from laplace_head.interactive.predictor import suggest_for_inputs
from laplace_head.model.metrics import per_image_iou
from laplace_head.settings import EvaluationSettings
from laplace_head.util.atomic import atomic_write_csv, atomic_write_json, atomic_write_text

LOGGER = logging.getLogger(__name__)
METHODS = ("base", "map", "map_temperature_scaled", "laplace")
TABLE_COLUMNS = ("iou", "dice", "nll", "brier", "ece", "auroc_entropy", "auroc_bald")
OVERALL_SCOPE = "overall"
CLASS_SCOPE_PREFIX = "class:"
# Accumulator keys: (OVERALL_SCOPE, method) or (_CLASS, class name, method): a class name is
# never a key of its own, so no name can land in the overall accumulators.
_CLASS = "class"


def class_scope(cls: str) -> str:
    """The ``scope`` of a class's rows in metrics.csv/md: ``class:<name>``."""
    return f"{CLASS_SCOPE_PREFIX}{cls}"


class EvaluationError(LaplaceHeadError):
    """Stage 7 cannot run (missing artifacts or invalid settings)."""


def _example_rows(classes: Sequence[str], sample_ids: Sequence[str], n_examples: int) -> list[int]:
    """Deterministic example rows: the first row of each class in turn, distinct samples."""
    chosen: list[int] = []
    seen: set[str] = set()
    by_class: dict[str, list[int]] = {}
    for row, (cls, sample) in enumerate(zip(classes, sample_ids)):
        if sample not in seen:
            seen.add(sample)
            by_class.setdefault(cls, []).append(row)
    while len(chosen) < n_examples and any(by_class.values()):
        for cls in sorted(by_class):
            if by_class[cls] and len(chosen) < n_examples:
                chosen.append(by_class[cls].pop(0))
    return sorted(chosen)


def _display_image(image_path: str, height: int, width: int) -> np.ndarray | None:
    from PIL import Image

    from laplace_head.dataset.images import load_image_rgb

    try:
        image = load_image_rgb(image_path)
    except (LaplaceHeadError, OSError, ValueError):
        return None
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def evaluate(
    laplace_dir: str | os.PathLike,
    test_h5: str | os.PathLike,
    val_h5: str | os.PathLike,
    out_files: Mapping[str, str | os.PathLike],
    settings: EvaluationSettings | None = None,
    run_id: str | None = None,
    tracker: Any = None,
) -> dict:
    """Evaluate base / MAP / MAP + temperature scaling / Laplace on the test split.

    Writes ``out_files`` (every name of :data:`laplace_head.layout.EVAL_FILES`: the layout's
    ``eval_files()``) and returns the metrics dict. ``settings`` defaults to
    :class:`~laplace_head.settings.EvaluationSettings` ().
    """
    settings = settings or EvaluationSettings()
    from laplace_head.evaluation.plots import plot_reliability, plot_uncertainty_examples

    if settings.ece_bins < 2 or settings.n_posterior_samples < 2:
        raise EvaluationError(
            f"need ece_bins >= 2 and n_posterior_samples >= 2; got {settings.ece_bins}, "
            f"{settings.n_posterior_samples}"
        )
    posterior = load_posterior(laplace_dir)
    scaling = fit_temperature_scaling(
        posterior, val_h5, settings.batch_rows, settings.max_pixels_calibration, settings.seed
    )
    LOGGER.info("temperature scaling on val: tau = %.4f", scaling["temperature"])
    accumulators, examples, classes, n_rows, row_iou, row_calib = _score_test_split(
        posterior, test_h5, scaling["temperature"], settings
    )
    metrics = _metrics(accumulators, classes, n_rows, posterior, scaling, settings, run_id)
    metrics.update(per_image_iou_comparison(row_iou, settings.n_bootstrap, settings.seed))
    metrics["paired"].update(
        calibration_comparisons(
            row_iou["sample_id"], row_calib, settings.n_bootstrap, settings.seed
        )
    )
    _write_outputs(out_files, metrics)
    plot_reliability(metrics["reliability"], out_files["reliability"])
    plot_uncertainty_examples(examples, out_files["examples"])
    if tracker is not None:
        tracker.log_table("eval/metrics", metrics_frame(metrics))
        tracker.summary(
            {f"eval/{m}/{k}": v for m, r in metrics["overall"].items() if r for k, v in r.items()}
        )
        for name, file in (("reliability", "reliability"), ("uncertainty_examples", "examples")):
            tracker.log_image(f"eval/{name}", out_files[file])
    return metrics


def per_image_iou_comparison(
    row_iou: Mapping[str, Sequence[Any]], n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """``per_image_iou`` (each image's mean IoU over its prompt sets, for the head's mask and
    the base segmenter's, sorted by sample id) and ``paired["head_vs_base_iou"]`` (head minus
    base per image: mean, bootstrap 95% CI, Wilcoxon p, as stage 8's comparisons).

    ``row_iou``: ``sample_id``, ``head``, ``base``, one entry per prompt set.
    """
    frame = pd.DataFrame({key: list(values) for key, values in row_iou.items()})
    if frame.empty:
        return {"per_image_iou": {"sample_id": [], "head": [], "base": []}, "paired": {}}
    by_image = frame.groupby("sample_id", sort=True)[["head", "base"]].mean()
    per_image = {
        "sample_id": [str(s) for s in by_image.index],
        "head": by_image["head"].tolist(),
        "base": by_image["base"].tolist(),
    }
    difference = (by_image["head"] - by_image["base"]).to_numpy()
    paired = {HEAD_VS_BASE_IOU: paired_comparison(difference, n_bootstrap, seed, HEAD_VS_BASE_IOU)}
    return {"per_image_iou": per_image, "paired": paired}


#: Stage 7's per-image calibration comparisons: the Laplace predictive against each baseline,
#: as ``<metric>_<baseline>_minus_laplace`` (positive = the posterior is better).
CALIBRATION_BASELINES = ("map", "map_temperature_scaled")


def calibration_key(metric: str, baseline: str) -> str:
    """The ``paired`` key of ``metric`` (nll / ece) of ``baseline`` minus the Laplace one."""
    return f"{metric}_{baseline}_minus_laplace"


#: (metric, baseline) of every calibration comparison of stage 7's ``paired`` record, in
#: table order; :func:`calibration_key` names each.
CALIBRATION_PAIRS = tuple(
    (metric, baseline) for metric in ("nll", "ece") for baseline in CALIBRATION_BASELINES
)


def calibration_comparisons(
    sample_ids: Sequence[str],
    row_calib: Mapping[str, tuple[list[np.ndarray], list[np.ndarray]]],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Per-image paired comparisons of the Laplace predictive's NLL and ECE with each of
    :data:`CALIBRATION_BASELINES`, images resampled (not pixels: the pixels of an image are
    not independent).

    ``row_calib[method]`` holds each test row's mean NLL and reliability-bin sums
    (:func:`~laplace_head.evaluation.calibration.row_calibration`), in ``sample_ids`` order.
    NLL: each image's mean over its prompt sets, the baseline minus Laplace per image, as
    :func:`paired_comparison` (bootstrap CI, Wilcoxon p, images better / worse). ECE is not a
    per-image mean, so the images' bin sums are resampled and the ECE difference of the
    resampled split is taken: ``mean_difference`` is the whole split's, ``ci95`` the
    bootstrap's (no Wilcoxon p).
    """
    if not sample_ids or "laplace" not in row_calib:
        return {}
    images, image_of_row = np.unique(np.asarray(sample_ids, dtype=str), return_inverse=True)
    n = len(images)

    def per_image(method: str) -> tuple[np.ndarray, np.ndarray]:
        nll = np.concatenate(row_calib[method][0])
        bins = np.concatenate(row_calib[method][1])
        rows = np.bincount(image_of_row, minlength=n)
        image_nll = np.bincount(image_of_row, nll, minlength=n) / rows
        image_bins = np.zeros((n, *bins.shape[1:]))
        np.add.at(image_bins, image_of_row, bins)
        return image_nll, image_bins

    laplace_nll, laplace_bins = per_image("laplace")
    out: dict[str, Any] = {}
    for baseline in CALIBRATION_BASELINES:
        if baseline not in row_calib:
            continue
        nll, bins = per_image(baseline)
        key = calibration_key("nll", baseline)
        out[key] = paired_comparison(nll - laplace_nll, n_bootstrap, seed, key)
        key = calibration_key("ece", baseline)
        draws = bootstrap_draws(n, n_bootstrap, seed, key)
        gap = expected_calibration_error(bins[draws].sum(1)) - expected_calibration_error(
            laplace_bins[draws].sum(1)
        )
        whole = expected_calibration_error(bins.sum(0)) - expected_calibration_error(
            laplace_bins.sum(0)
        )
        out[key] = {
            "n": n,
            "mean_difference": float(whole),
            "ci95": ci95(gap),
        }
    return out


def _score_test_split(
    posterior: Any, test_h5: str | os.PathLike, tau: float, settings: EvaluationSettings
) -> tuple[dict, list[dict[str, Any]], list[str], int, dict[str, list], dict[str, tuple]]:
    """Stream the test split once: the calibration accumulators of every (scope, method), the
    example panels' data, the row classes, the row count, each row's sample id with its
    head and base IoU, and each row's NLL and reliability bins per method
    (:func:`calibration_comparisons`)."""
    ece_bins = settings.ece_bins
    prompt_sigma, batch_rows = settings.prompt_sigma, settings.batch_rows
    n_examples = settings.n_examples
    rules = PolicySettings.of(settings.policy_settings)
    from laplace_head.cache.split_h5 import read_h5_index

    index = read_h5_index(test_h5)
    classes = index["class"].astype(str).tolist() if len(index) else []
    example_rows = _example_rows(classes, index.get("sample_id", pd.Series()).tolist(), n_examples)
    accumulators: dict[tuple[str, ...], CalibrationAccumulator] = {}
    examples: list[dict[str, Any]] = []
    sample_ids = index["sample_id"].astype(str).tolist() if len(index) else []
    row_iou: dict[str, list] = {"sample_id": [], "head": [], "base": []}
    row_calib: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for batch in iter_split_batches(test_h5, batch_rows, posterior.logit_clip):
        map_logits, variance = posterior.logit_moments(batch.inputs)
        predictive = posterior.predictive_moments((map_logits, variance))
        maps = gaussian_logit_uncertainty(*predictive)
        bald_score = torch.log(maps["bald"].double().clamp_min(1e-300))
        effective = {
            "base": batch.raw_logits.nan_to_num(0.0),
            "map": map_logits,
            "map_temperature_scaled": map_logits / tau,
            "laplace": probit_logits(*predictive),
        }
        batch_classes = classes[batch.start : batch.start + batch.inputs.shape[0]]
        row_iou["sample_id"] += sample_ids[batch.start : batch.start + batch.inputs.shape[0]]
        row_iou["head"] += per_image_iou(map_logits, batch.gt_mask).tolist()
        row_iou["base"] += per_image_iou(effective["base"], batch.gt_mask).tolist()
        calibration = {}
        for method, logits in effective.items():
            calibration[method] = nll, bins = row_calibration(logits, batch.gt_mask, ece_bins)
            row_calib.setdefault(method, ([], []))[0].append(nll)
            row_calib[method][1].append(bins)
        for cls in sorted(set(batch_classes)):
            rows = np.array([i for i, c in enumerate(batch_classes) if c == cls])
            for method, logits in effective.items():
                scores = {"entropy": log_uncertainty(logits[rows])}
                if method == "laplace":
                    scores["bald"] = bald_score[rows]
                nll, bins = calibration[method]
                stats = batch_statistics(
                    logits[rows], batch.gt_mask[rows], scores, ece_bins, (nll[rows], bins[rows])
                )
                for key in ((OVERALL_SCOPE, method), (_CLASS, cls, method)):
                    accumulators.setdefault(key, CalibrationAccumulator(ece_bins))
                    accumulators[key].add(stats)
        for offset in range(batch.inputs.shape[0]):
            row = batch.start + offset
            if row in example_rows:
                examples.append(
                    _example(posterior, batch, offset, index.iloc[row], prompt_sigma, rules)
                )
    return accumulators, examples, classes, len(index), row_iou, row_calib


def _metrics(
    accumulators: Mapping[tuple[str, ...], CalibrationAccumulator],
    classes: Sequence[str],
    n_rows: int,
    posterior: Any,
    scaling: dict,
    settings: EvaluationSettings,
    run_id: str | None,
) -> dict:
    """The metrics.json record: per method overall and per class, reliability, provenance."""
    results = {key: acc.result() for key, acc in accumulators.items()}
    return {
        "run_id": run_id,
        "split": "test",
        "n_rows": n_rows,
        "classes": sorted(set(classes)),
        "methods": {
            "base": "base segmenter raw logits_256",
            "map": "MAP head",
            "map_temperature_scaled": "MAP head logits / tau, tau fitted on val NLL",
            "laplace": "Laplace head, probit GLM predictive",
        },
        "ece_binning": f"{settings.ece_bins} equal-width bins of the foreground probability",
        "auroc_definition": "AUROC of per-pixel uncertainty (entropy; BALD for laplace) for "
        "detecting pixels misclassified at p > 0.5",
        "temperature_scaling": scaling,
        "laplace": {
            "prior_precision": posterior.prior_precision,
            "temperature": posterior.temperature,
            "output_temperature": posterior.output_temperature,
            "posterior": posterior.meta.get("posterior"),
            "n_posterior_samples": settings.n_posterior_samples,
        },
        "overall": {m: results.get((OVERALL_SCOPE, m)) for m in METHODS},
        "per_class": {
            cls: {m: results.get((_CLASS, cls, m)) for m in METHODS} for cls in sorted(set(classes))
        },
        "reliability": {
            m: accumulators[(OVERALL_SCOPE, m)].reliability()
            for m in METHODS
            if (OVERALL_SCOPE, m) in accumulators
        },
    }


#: The click rule of the example panels' suggested clicks: the region rule needs no base
#: segmenter (stage 7 has none), and its region centres are what ``bald_lookahead`` re-ranks.
EXAMPLE_CLICK_RULE = "bald_region"


def _example(
    posterior: Posterior,
    batch: Any,
    offset: int,
    index_row: pd.Series,
    sigma: float,
    rules: PolicySettings,
) -> dict[str, Any]:
    inputs = batch.inputs[offset]
    height, width = inputs.shape[1:]
    # The row's quadrature maps and the next clicks from them, off the row's given clicks.
    prompts, maps = suggest_for_inputs(
        posterior,
        inputs,
        k=5,
        policy=EXAMPLE_CLICK_RULE,
        min_distance=2.0 * sigma,
        policy_settings=rules,
    )
    image_path = str(index_row.get("image_path", ""))
    return {
        "title": f"{index_row.get('sample_id', '')} #{index_row.get('promptset_id', '')}",
        "image": _display_image(image_path, height, width) if image_path else None,
        "gt": batch.gt_mask[offset].numpy(),
        "base_logits": batch.raw_logits[offset].numpy(),
        "probability": maps["predictive_probability"],
        "entropy": maps["entropy"],
        "bald": maps["bald"],
        "prompts": prompts,
        "click_rule": EXAMPLE_CLICK_RULE,
        "pos_map": inputs[1].numpy(),
        "neg_map": inputs[2].numpy(),
    }


def metrics_frame(metrics: dict) -> pd.DataFrame:
    """One row per (scope, method) with the headline metrics.

    ``scope`` is ``overall`` for the whole split and ``class:<name>`` for a class, so a class
    named ``overall`` gets its own rows and never replaces the overall ones.
    """
    rows = []
    scopes = [(OVERALL_SCOPE, metrics["overall"])]
    scopes += [(class_scope(cls), value) for cls, value in sorted(metrics["per_class"].items())]
    for scope, by_method in scopes:
        for method, values in by_method.items():
            values = values or {}
            row = {"scope": scope, "method": method, "n_rows": values.get("n_rows", 0)}
            row.update({column: values.get(column) for column in TABLE_COLUMNS})
            rows.append(row)
    return pd.DataFrame(rows, columns=["scope", "method", "n_rows", *TABLE_COLUMNS])


def markdown_table(frame: pd.DataFrame) -> str:
    """The metrics table as GitHub markdown (4 decimals, '-' for not applicable).

    A ``|`` in a cell (a class named ``a|b``) is escaped and line breaks become spaces, so every
    row stays one table row.
    """
    header = "| " + " | ".join(frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}")
            else:
                cells.append(" ".join(str(value).splitlines()).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _paired_line(metrics: Mapping[str, Any]) -> str:
    """The per-image comparisons under the table: head vs base IoU, and the Laplace
    predictive's NLL and ECE against each baseline; "" without any."""
    paired = metrics.get("paired") or {}
    lines = []
    iou = paired.get(HEAD_VS_BASE_IOU) or {}
    if iou.get("n"):
        low, high = iou["ci95"]
        lines.append(
            f"Head IoU minus base IoU per image (mean over its prompt sets), {iou['n']} "
            f"images: {iou['mean_difference']:+.4f} [95% CI {low:+.4f}, {high:+.4f}], "
            f"Wilcoxon p {iou['wilcoxon_p']:.3g}, better / worse on "
            f"{iou['n_better']} / {iou['n_worse']}."
        )
    for metric, baseline in CALIBRATION_PAIRS:
        entry = paired.get(calibration_key(metric, baseline)) or {}
        if entry.get("n"):
            low, high = entry["ci95"]
            line = (
                f"{metric.upper()} of {baseline} minus Laplace ({entry['n']} images resampled; "
                f"> 0: the posterior is better): {entry['mean_difference']:+.5f} "
                f"[95% CI {low:+.5f}, {high:+.5f}]"
            )
            if "n_better" in entry:
                line += f", Laplace better / worse on {entry['n_better']} / {entry['n_worse']}"
            lines.append(line + ".")
    return "".join(f"\n{line}\n" for line in lines)


def _write_outputs(out_files: Mapping[str, str | os.PathLike], metrics: dict) -> None:
    for path in out_files.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame = metrics_frame(metrics)
    atomic_write_csv(out_files["table"], frame)
    atomic_write_text(out_files["markdown"], markdown_table(frame) + _paired_line(metrics))
    atomic_write_json(out_files["metrics"], metrics)
