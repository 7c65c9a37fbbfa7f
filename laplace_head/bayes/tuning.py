"""Choosing the Laplace hyperparameters (prior precision, temperature) of any posterior variant.

Three rules (``laplace.tuning``):

* ``val_nll`` - the pair of (prior_precision_grid x temperature_grid) with the lowest mean
  validation pixel NLL of the probit GLM predictive. Measured pitfall: on real photographs it
  picked T = 1e5 for the last-layer diagonal posterior, the tempered curvature (~5) drowned in
  the prior precision (100) and the posterior became the prior; NLL rewards a slightly softer
  predictive, so it uses the posterior as a temperature-scaling knob.
* ``fixed_temperature`` - T fixed by ``laplace.fixed_temperature`` (``pixels_per_image``: the
  pixels each training row contributes to the curvature, so one prompt set of one image counts
  as one independent observation), the prior precision chosen on validation NLL.
* ``marglik`` - the same fixed T, the prior precision maximising laplace-torch's Laplace
  marginal likelihood (no validation data).

For every variant the GLM logit variance of a pixel is a weighted sum of its squared rotated
Jacobian (:mod:`laplace_head.bayes.curvature`); only the weights change across the grid, so one
streaming pass over the validation split gives the NLL of every pair. laplace-torch's built-in
gridsearch is not used: it tunes the prior precision only, and with ``glm`` + ``mc`` it
silently returns the first grid value. Whatever the rule, the fit records how far the data
moved the posterior off the prior and whether BALD ranks the validation errors above chance.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.bayes.curvature import BlockCurvature
from laplace_head.bayes.jacobian import JacobianFactors, jacobian_factors
from laplace_head.bayes.pixels import pixels_per_row, sampled_batches
from laplace_head.bayes.predictive import (
    PROBIT_SCALE,
    gaussian_logit_uncertainty,
    tempered_moments,
)
from laplace_head.cache.split_h5 import split_shape
from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.settings import PIXELS_PER_IMAGE
from laplace_head.util.seeding import derive_seed

TUNING_RULES = ("val_nll", "fixed_temperature", "marglik")
#: The posterior counts as collapsed onto its prior when, in every parameter block, the mean
#: tempered curvature is below this fraction of the prior precision: every posterior variance is
#: then within ~5 % of the prior variance (variance ratio 1 / (1 + ratio)).
COLLAPSE_RATIO = 0.05
#: The output temperatures ``tau`` that ``laplace.output_temperature`` tries: 0.25 to 8 in
#: steps of 2^(1/24) (3 %; the validation NLL is flat within a step of its optimum), 1 included.
OUTPUT_TEMPERATURE_GRID = tuple(float(2.0 ** (k / 24)) for k in range(-48, 73))
GRID_CHUNK_PIXELS = 1 << 11  # (S, G, n) buffers of ~20 MB for 121 taus x 9 pairs
AUROC_BINS = 4096


class EmptySplitError(LaplaceHeadError):
    """A split needed for tuning has no rows."""


def resolve_temperature(value: float | str, per_row: int) -> float:
    """``laplace.fixed_temperature`` as a number (``pixels_per_image`` -> pixels per row)."""
    if value == PIXELS_PER_IMAGE:
        return float(per_row)
    return float(value)


@dataclass(frozen=True)
class ValidationPass:
    """What a tuning pass streams: the MAP head and its curvature over the validation split.

    ``max_pixels`` caps the pixels used (a seeded uniform subset of ``max_pixels // rows`` per
    row, the same in every pass; None uses every pixel); ``batch_rows`` rows are read at a time.
    """

    head: NoImageHead
    curvature: BlockCurvature
    val_h5: Path
    logit_clip: float
    batch_rows: int
    max_pixels: int | None = None
    seed: int = 0

    def chunks(
        self, desc: str
    ) -> Iterator[tuple[torch.Tensor, list[JacobianFactors], torch.Tensor]]:
        """(MAP logits (n,), Jacobian factors, labels (n,)) float64 per validation row."""
        n_rows, height, width = split_shape(self.val_h5)
        per_row = pixels_per_row(max(n_rows, 1), height * width, self.max_pixels)
        head = _double(self.head)
        layer = self.curvature.variant.layer
        tune_seed = derive_seed(self.seed, "laplace_tune_pixels")
        for batch, subsets in sampled_batches(
            self.val_h5, self.batch_rows, self.logit_clip, per_row, tune_seed, desc
        ):
            for offset, keep in enumerate(subsets):
                inputs = batch.inputs[offset : offset + 1].double()
                logits, factors = jacobian_factors(head, inputs, layer)
                labels = batch.gt_mask[offset].reshape(-1).double()
                logits = logits.reshape(-1)
                if keep is not None:
                    index = torch.from_numpy(keep)
                    logits, labels = logits[index], labels[index]
                    factors = [f.rows(index) for f in factors]
                yield logits, factors, labels


def probit_nll_sums(
    map_logits: torch.Tensor,
    logit_variance: torch.Tensor,
    labels: torch.Tensor,
    output_temperatures: torch.Tensor,
) -> torch.Tensor:
    """Summed pixel NLL of the probit predictive of ``z / tau`` for every output temperature
    and grid pair: (n,) float64 MAP logits and labels, (G, n) variances, (S, 1, 1) ``tau``
    -> (S, G).

    The same numbers as ``binary_cross_entropy_with_logits`` of
    ``probit_logits(*tempered_moments(z, v, tau))``, summed (to float64 rounding, ~1e-15;
    tests/unit/test_laplace_fit.py), rearranged for the grid's (S, G, n) elements: the
    effective logit is ``x = z / sqrt(tau^2 + pi v / 8)`` and a pixel's NLL
    ``softplus((1 - 2 y) x)``, with ``softplus(t) = max(t, 0) + log1p(e^-|t|)``, in two
    (S, G, n) buffers. The plain form, with its several fresh temporaries of that size (each
    costs about as much as its arithmetic), ran twice as long."""
    signed = map_logits * (1.0 - 2.0 * labels)
    logits = torch.add(output_temperatures**2, logit_variance, alpha=PROBIT_SCALE).sqrt_()
    logits = torch.div(signed, logits, out=logits)  # (1 - 2 y) x
    tail = logits.abs().neg_().exp_().log1p_()
    return logits.clamp_min_(0.0).add_(tail).sum(-1)


def validation_nll_grid(
    data: ValidationPass,
    prior_grid: Sequence[float],
    temperature_grid: Sequence[float],
    output_temperatures: Sequence[float] = (1.0,),
) -> dict[str, Any]:
    """Mean validation pixel NLL of the probit GLM predictive for every grid pair, one pass.

    Each pair's predictive is also scored with every output temperature ``tau`` (the logit
    ``z / tau``, :func:`~laplace_head.bayes.predictive.tempered_moments`); a pair's NLL is its
    best over them. Returns ``val_nll``, ``best_output_temperature`` and
    ``mean_logit_variance`` (P, T) arrays, ``val_nll_by_output_temperature`` (P, T, S),
    ``map_nll`` (the MAP head, no posterior variance) and ``n_pixels``.
    """
    curvature = data.curvature.to("cpu", torch.float64)
    priors = torch.tensor(prior_grid, dtype=torch.float64).repeat_interleave(len(temperature_grid))
    temps = torch.tensor(temperature_grid, dtype=torch.float64).repeat(len(prior_grid))
    weights = curvature.weights(priors, temps)  # per block (G, out, in)
    taus = torch.tensor(output_temperatures, dtype=torch.float64)[:, None, None]  # (S, 1, 1)
    nll_sum = torch.zeros(taus.shape[0], priors.numel(), dtype=torch.float64)
    var_sum = torch.zeros(priors.numel(), dtype=torch.float64)
    map_sum, n_pixels = 0.0, 0
    for z, factors, labels in data.chunks("laplace tune"):
        map_sum += float(F.binary_cross_entropy_with_logits(z, labels, reduction="sum"))
        for start in range(0, z.numel(), GRID_CHUNK_PIXELS):
            chunk = slice(start, start + GRID_CHUNK_PIXELS)
            part = [f.rows(chunk) for f in factors]
            logit_var = curvature.logit_variance(part, weights)  # (G, n)
            nll_sum += probit_nll_sums(z[chunk], logit_var, labels[chunk], taus)
            var_sum += logit_var.sum(1)
        n_pixels += z.numel()
    if n_pixels == 0:
        raise EmptySplitError(
            f"validation split {data.val_h5} is empty; cannot tune the posterior."
        )
    shape = (len(prior_grid), len(temperature_grid))
    by_tau = (nll_sum / n_pixels).reshape(-1, *shape).permute(1, 2, 0).numpy()  # (P, T, S)
    best = by_tau.argmin(-1)
    return {
        "val_nll": by_tau.min(-1),
        "best_output_temperature": np.asarray(output_temperatures, dtype=np.float64)[best],
        "val_nll_by_output_temperature": by_tau,
        "mean_logit_variance": (var_sum / n_pixels).reshape(shape).numpy(),
        "map_nll": map_sum / n_pixels,
        "n_pixels": n_pixels,
    }


def _auroc(error_scores: list[torch.Tensor], correct_scores: list[torch.Tensor]) -> float | None:
    """AUROC of scores for errors vs correct pixels (ties count one half), exact ranks."""
    errors, correct = torch.cat(error_scores), torch.cat(correct_scores)
    if errors.numel() == 0 or correct.numel() == 0:
        return None
    scores = torch.cat([errors, correct]).numpy()
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    n_err = errors.numel()
    n_ok = correct.numel()
    return float((ranks[:n_err].sum() - n_err * (n_err + 1) / 2) / (n_err * n_ok))


def validation_error_aurocs(
    data: ValidationPass,
    prior_precision: float,
    temperature: float,
    output_temperature: float = 1.0,
) -> dict[str, Any]:
    """How well BALD and the predictive entropy flag the validation pixels the predictive
    mask gets wrong (AUROC; 0.5 = chance, below 0.5 = anti-correlated), and the error rate."""
    curvature = data.curvature.to("cpu", torch.float64)
    weights = curvature.weights(prior_precision, temperature)
    scores: dict[str, tuple[list, list]] = {"bald": ([], []), "entropy": ([], [])}
    n_pixels = 0
    for z, factors, labels in data.chunks("laplace check"):
        maps = gaussian_logit_uncertainty(
            *tempered_moments(z, curvature.logit_variance(factors, weights), output_temperature)
        )
        n_pixels += z.numel()
        wrong = (maps["predictive_probability"] > 0.5) != (labels > 0.5)
        for name in ("bald", "entropy"):
            scores[name][0].append(maps[name][wrong].float())
            scores[name][1].append(maps[name][~wrong].float())
    return {
        "bald_error_auroc": _auroc(*scores["bald"]) if n_pixels else None,
        "entropy_error_auroc": _auroc(*scores["entropy"]) if n_pixels else None,
        "n_pixels": n_pixels,
        "error_rate": float(sum(e.numel() for e in scores["bald"][0]) / n_pixels)
        if n_pixels
        else None,
    }


def _double(head: NoImageHead) -> NoImageHead:
    import copy

    return copy.deepcopy(head).double().eval().requires_grad_(False)


def collapse_report(curvature: BlockCurvature, prior_precision: float, temperature: float) -> dict:
    """Data-to-prior curvature ratios per block and whether the posterior is the prior."""
    ratios = curvature.data_to_prior_ratio(prior_precision, temperature)
    collapsed = all(r["mean"] < COLLAPSE_RATIO for r in ratios.values())
    return {"per_block": ratios, "collapsed_onto_prior": collapsed, "threshold": COLLAPSE_RATIO}


def edge_report(
    nll: np.ndarray,
    chosen: tuple[int, int],
    prior_grid: Sequence[float],
    temperature_grid: Sequence[float],
) -> dict[str, Any]:
    """Whether the optimum sits on an edge of either grid axis, with user-facing warnings."""
    report: dict[str, Any] = {"warnings": []}
    for axis, (name, grid) in enumerate(
        (("prior_precision", prior_grid), ("temperature", temperature_grid))
    ):
        index = chosen[axis]
        line = nll[:, chosen[1]] if axis == 0 else nll[chosen[0], :]
        spread = float(line.max() - line.min())
        at_edge = len(grid) > 1 and index in (0, len(grid) - 1)
        flat = spread <= 1e-9 * max(1.0, abs(float(line.min())))
        report[f"{name}_at_edge"] = bool(at_edge)
        report[f"{name}_nll_spread"] = spread
        if at_edge and not flat:
            side = "lower" if index == 0 else "upper"
            hint = {
                ("temperature", "upper"): " (at very large T the data term vanishes and the "
                "posterior tends to the prior N(MAP, 1 / prior_precision))",
                ("temperature", "lower"): " (T = 1 is the untempered Laplace; the MAP limit)",
            }.get((name, side), "")
            report["warnings"].append(
                f"the {name} optimum {grid[index]:g} is at the {side} edge of "
                f"laplace.{name}_grid {list(grid)}: the grid is too narrow, extend it{hint}."
            )
        elif flat and len(grid) > 1:
            report["warnings"].append(
                f"validation NLL does not change across laplace.{name}_grid (spread "
                f"{spread:.2e}): {name} has no effect at the chosen point."
            )
    return report


def marglik_report(
    la: Any,
    prior_grid: Sequence[float],
    temperature_grid: Sequence[float],
    chosen_temperature: float,
) -> dict[str, Any]:
    """Laplace log marginal likelihood over the grid, and its continuous prior optimum."""
    table = np.zeros((len(prior_grid), len(temperature_grid)))
    with torch.no_grad():
        for j, temperature in enumerate(temperature_grid):
            la.temperature = float(temperature)
            for i, prior in enumerate(prior_grid):
                table[i, j] = float(la.log_marginal_likelihood(torch.tensor(float(prior))))
    best = np.unravel_index(int(np.argmax(table)), table.shape)
    la.temperature = float(chosen_temperature)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
        la.optimize_prior_precision(
            pred_type="glm",
            method="marglik",
            prior_structure="scalar",
            n_steps=200,
            init_prior_prec=1.0,
        )
    optimized = float(la.prior_precision.reshape(-1)[0])
    return {
        "log_marglik": table.tolist(),
        "grid_optimum": {
            "prior_precision": float(prior_grid[best[0]]),
            "temperature": float(temperature_grid[best[1]]),
            "log_marglik": float(table[best]),
        },
        "optimized_prior_precision_at_chosen_temperature": optimized,
        "note": "marginal likelihood is reported for comparison only; the posterior uses the "
        "validation-NLL optimum (the tempered marglik is not a criterion for T).",
    }
