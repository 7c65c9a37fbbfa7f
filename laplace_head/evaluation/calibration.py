"""Calibration and error-detection statistics, streamed: NLL, Brier, ECE, reliability, AUROC.

:func:`batch_statistics` reduces a batch of effective logits (p = sigmoid(l)) and targets to
sums; :class:`CalibrationAccumulator` adds them up, so any split size needs bounded memory.

* ECE: ``n_bins`` equal-width bins of the **foreground probability** p (not of the confidence
  max(p, 1-p)); ``ECE = sum_b n_b / n * |mean p_b - fraction foreground_b|``.
* AUROC of an uncertainty score for detecting misclassified pixels (``p > 0.5`` differs from the
  ground truth): exact up to ties inside one of ``SCORE_BINS`` bins of the log-uncertainty on
  [-100, 0] (bin width 0.02 nats of log-score), ties counted one half.
* :func:`fit_temperature_scaling`: the classic one-parameter calibration baseline.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.bayes.posterior import Posterior
from laplace_head.cache.split_h5 import iter_split_batches, split_num_rows, split_shape
from laplace_head.model.metrics import per_image_dice, per_image_iou
from laplace_head.util.seeding import derive_seed

SCORE_RANGE = (-100.0, 0.0)  # log-uncertainty histogram range for the AUROC
SCORE_BINS = 5000
SCALE_MIN, SCALE_MAX = 1e-3, 1e3  # bounds of 1 / tau in temperature scaling
# Temperature scaling fits ONE scalar: a few million pixels pin it down, more only cost memory
# (the pixels are held for the Newton iterations), so this cap holds even for max_pixels=None.
TS_MAX_PIXELS = 4_000_000


class CalibrationAccumulator:
    """Running sums for one (scope, method): NLL, Brier, reliability bins, AUROC histograms."""

    def __init__(self, n_bins: int) -> None:
        self.n_bins = n_bins
        self.count = np.zeros(n_bins)
        self.sum_p = np.zeros(n_bins)
        self.sum_y = np.zeros(n_bins)
        self.nll_sum = self.brier_sum = 0.0
        self.n_pixels = self.n_errors = 0
        self.iou: list[float] = []
        self.dice: list[float] = []
        self.hist: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, stats: dict[str, Any]) -> None:
        """Merge the statistics of a batch (see :func:`batch_statistics`)."""
        self.count += stats["count"]
        self.sum_p += stats["sum_p"]
        self.sum_y += stats["sum_y"]
        self.nll_sum += stats["nll_sum"]
        self.brier_sum += stats["brier_sum"]
        self.n_pixels += stats["n_pixels"]
        self.n_errors += stats["n_errors"]
        self.iou += stats["iou"]
        self.dice += stats["dice"]
        for name, (err, ok) in stats["hist"].items():
            total_err, total_ok = self.hist.get(name, (0, 0))
            self.hist[name] = (total_err + err, total_ok + ok)

    def reliability(self) -> dict[str, Any]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = np.where(self.count > 0, self.sum_p / self.count, np.nan)
            frequency = np.where(self.count > 0, self.sum_y / self.count, np.nan)
        bins = np.stack([self.count, self.sum_p, self.sum_y])
        ece = float(expected_calibration_error(bins)) if self.n_pixels else None
        return {
            "bin_edges": np.linspace(0, 1, self.n_bins + 1).tolist(),
            "count": self.count.astype(int).tolist(),
            "mean_probability": _nan_to_none(mean_p),
            "frequency": _nan_to_none(frequency),
            "ece": ece,
        }

    def result(self) -> dict[str, Any]:
        n = self.n_pixels
        out: dict[str, Any] = {
            "n_rows": len(self.iou),
            "n_pixels": n,
            "iou": float(np.mean(self.iou)) if self.iou else None,
            "dice": float(np.mean(self.dice)) if self.dice else None,
            "nll": self.nll_sum / n if n else None,
            "brier": self.brier_sum / n if n else None,
            "ece": self.reliability()["ece"],
            "error_rate": self.n_errors / n if n else None,
        }
        for name, (err, ok) in self.hist.items():
            out[f"auroc_{name}"] = histogram_auroc(err, ok)
        return out


def expected_calibration_error(bins: np.ndarray) -> np.ndarray:
    """ECE from reliability-bin sums ``bins`` (..., 3, n_bins): pixel count, sum of p and sum of
    the labels per bin; ``sum_b |sum_p_b - sum_y_b| / n``, i.e. ``sum_b n_b / n * |mean p_b -
    frequency_b|``. Returns the leading shape (0 where there are no pixels)."""
    count, sum_p, sum_y = bins[..., 0, :], bins[..., 1, :], bins[..., 2, :]
    n = count.sum(-1)
    return np.abs(sum_p - sum_y).sum(-1) / np.maximum(n, 1)


def row_calibration(
    logits: torch.Tensor, target: torch.Tensor, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (B, H, W) effective logits: the mean pixel NLL (B,) and the reliability-bin
    sums (B, 3, n_bins) of :func:`expected_calibration_error`, so that images can be
    resampled (per-image paired comparisons of NLL and ECE)."""
    y = target.double().flatten(1)
    logits = logits.double().flatten(1)
    nll = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1).numpy()
    p = torch.sigmoid(logits)
    rows = logits.shape[0]
    slot = (p * n_bins).long().clamp_(0, n_bins - 1) + n_bins * torch.arange(rows)[:, None]
    slot, p, y = slot.flatten().numpy(), p.flatten().numpy(), y.flatten().numpy()
    size = rows * n_bins
    bins = np.stack(
        [
            np.bincount(slot, minlength=size),
            np.bincount(slot, p, minlength=size),
            np.bincount(slot, y, minlength=size),
        ]
    ).astype(np.float64)
    return nll, bins.reshape(3, rows, n_bins).transpose(1, 0, 2)


def batch_statistics(
    logits: torch.Tensor,
    target: torch.Tensor,
    scores: dict[str, torch.Tensor],
    n_bins: int,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Sums over (B, H, W) effective logits / targets that :class:`CalibrationAccumulator` adds.

    ``scores`` maps a name to (B, H, W) log-uncertainties (higher = more uncertain) whose
    histograms over misclassified / correct pixels give the AUROC. ``rows``: these rows'
    :func:`row_calibration` (NLL, reliability bins) when the caller has it already; the NLL
    and bin sums are theirs.
    """
    row_nll, row_bins = rows if rows is not None else row_calibration(logits, target, n_bins)
    y = target.double()
    logits = logits.double()
    p_flat, y_flat = torch.sigmoid(logits).flatten().numpy(), y.flatten().numpy()
    errors = ((logits > 0) != (target > 0)).flatten().numpy()
    hist = {}
    low, high = SCORE_RANGE
    for name, score in scores.items():
        scaled = (score.double().flatten().numpy() - low) / (high - low) * SCORE_BINS
        index = np.clip(np.nan_to_num(scaled, nan=0.0, neginf=0.0), 0, SCORE_BINS - 1)
        index = index.astype(np.int64)
        hist[name] = (
            np.bincount(index[errors], minlength=SCORE_BINS),
            np.bincount(index[~errors], minlength=SCORE_BINS),
        )
    count, sum_p, sum_y = row_bins.sum(0)
    return {
        "count": count,
        "sum_p": sum_p,
        "sum_y": sum_y,
        "nll_sum": float(row_nll.sum() * logits[0].numel()) if len(row_nll) else 0.0,
        "brier_sum": float(np.square(p_flat - y_flat).sum()),
        "n_pixels": int(y.numel()),
        "n_errors": int(errors.sum()),
        "iou": per_image_iou(logits, target).tolist(),
        "dice": per_image_dice(logits, target).tolist(),
        "hist": hist,
    }


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def histogram_auroc(positive_hist: np.ndarray, negative_hist: np.ndarray) -> float | None:
    """AUROC P(score_pos > score_neg) + P(tie) / 2 from counts in ascending score bins."""
    n_pos, n_neg = positive_hist.sum(), negative_hist.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    negatives_below = np.cumsum(negative_hist) - negative_hist
    wins = (positive_hist * negatives_below).sum() + 0.5 * (positive_hist * negative_hist).sum()
    return float(wins / (n_pos * n_neg))


def log_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """log min(p, 1 - p) of sigmoid(logits): ranks pixels exactly as the binary entropy does."""
    return F.logsigmoid(-logits.double().abs())


def fit_temperature_scaling(
    posterior: Posterior,
    val_h5: str | os.PathLike,
    batch_rows: int = 4,
    max_pixels: int | None = 4_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    """One temperature tau for the MAP logits minimising validation pixel NLL (Newton on 1/tau).

    At most ``max_pixels`` validation pixels are used (a seeded uniform subset per row), and never
    more than :data:`TS_MAX_PIXELS` (memory stays bounded when ``max_pixels`` is None).
    """
    n_rows = split_num_rows(val_h5)
    if n_rows == 0:
        return {"temperature": 1.0, "n_pixels": 0, "note": "empty validation split: tau = 1"}
    n_total = n_rows * int(np.prod(split_shape(val_h5)[1:]))
    if min(max_pixels or n_total, n_total) > TS_MAX_PIXELS:
        max_pixels = TS_MAX_PIXELS
    zs, ys = [], []
    for batch in iter_split_batches(val_h5, batch_rows, posterior.logit_clip):
        z = posterior.map_logits(batch.inputs).flatten(1)
        y = batch.gt_mask.flatten(1)
        per_row = z.shape[1] if max_pixels is None else max(1, max_pixels // n_rows)
        for offset in range(z.shape[0]):
            if per_row < z.shape[1]:
                rng = np.random.default_rng(derive_seed(seed, "ts_pixels", batch.start + offset))
                keep = torch.from_numpy(rng.choice(z.shape[1], per_row, replace=False))
                zs.append(z[offset, keep])
                ys.append(y[offset, keep])
            else:
                zs.append(z[offset])
                ys.append(y[offset])
    z, y = torch.cat(zs).double(), torch.cat(ys).double()  # float64 only for the kept subset

    def nll(scale: float) -> float:
        return float(F.binary_cross_entropy_with_logits(scale * z, y))

    # NLL(a * z) is convex in a = 1 / tau: damped Newton, kept inside [SCALE_MIN, SCALE_MAX]
    # (a head whose logits carry no signal would otherwise drive a to 0, tau to infinity).
    scale = 1.0
    for _ in range(100):
        p = torch.sigmoid(scale * z)
        grad = float(((p - y) * z).mean())
        hess = float((p * (1 - p) * z.square()).mean())
        if hess <= 0:
            break
        step = grad / hess
        new = min(max(scale - step, SCALE_MIN), SCALE_MAX)
        current = nll(scale)
        while nll(new) > current and abs(new - scale) > 1e-12:
            new = 0.5 * (new + scale)
        if abs(new - scale) < 1e-10 * max(1.0, scale):
            scale = new
            break
        scale = new
    return {
        "temperature": 1.0 / scale,
        "at_bound": scale in (SCALE_MIN, SCALE_MAX),
        "val_nll_before": nll(1.0),
        "val_nll_after": nll(scale),
        "n_pixels": int(z.numel()),
    }
