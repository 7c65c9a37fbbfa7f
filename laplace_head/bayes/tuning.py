"""Choosing the Laplace hyperparameters: validation NLL over (prior precision, temperature).

For a diagonal posterior over the linear last layer the probit GLM predictive is closed form:
a pixel with features ``phi = [phi_1..phi_C, 1]`` has ``var(z) = sum_i phi_i^2 / P_i`` with
``P = H / T + prior_precision`` and ``p = sigmoid(z_map / sqrt(1 + pi var(z) / 8))`` (the
formulas are in :mod:`laplace_head.bayes.predictive`, shared with the Posterior API). Only the
17 precisions change across the grid, so one streaming pass over the validation split gives the
NLL of every (prior precision, temperature) pair. laplace-torch's built-in gridsearch is not
used: it tunes the prior precision only, and with ``glm`` + ``mc`` it silently returns the first
grid value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from laplace_head.bayes.layer import flat_features
from laplace_head.bayes.predictive import (
    diagonal_posterior_variance,
    linear_logits,
    logit_variance,
    probit_logits,
)
from laplace_head.cache.split_h5 import iter_split_batches, split_num_rows
from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead

GRID_CHUNK_ELEMENTS = 1 << 22


class EmptySplitError(LaplaceHeadError):
    """A split needed for tuning has no rows."""


def posterior_variances(
    hessian: torch.Tensor, prior_grid: Sequence[float], temperature_grid: Sequence[float]
) -> torch.Tensor:
    """Diagonal posterior variances ``1 / (H / T + prior)`` for every pair, (P, T, n_params)."""
    prior = torch.tensor(prior_grid, dtype=torch.float64).view(-1, 1, 1)
    temp = torch.tensor(temperature_grid, dtype=torch.float64).view(1, -1, 1)
    return diagonal_posterior_variance(hessian.double().view(1, 1, -1), prior, temp)


def validation_nll_grid(
    head: NoImageHead,
    mean: torch.Tensor,
    variances: torch.Tensor,
    val_h5: Path,
    logit_clip: float,
    batch_rows: int,
) -> dict[str, Any]:
    """Mean validation pixel NLL of the probit predictive for every grid pair, one pass.

    Returns ``val_nll`` and ``mean_logit_variance`` (P, T) arrays, ``map_nll`` (the MAP head,
    no posterior variance) and ``n_pixels``.
    """
    grid_shape = variances.shape[:2]
    flat_var = variances.reshape(-1, variances.shape[-1])  # (G, n_params), G = P * T
    nll_sum = torch.zeros(flat_var.shape[0], dtype=torch.float64)
    var_sum = torch.zeros_like(nll_sum)
    map_sum, n_pixels = 0.0, 0
    n_rows = split_num_rows(val_h5)
    for batch in tqdm(
        iter_split_batches(val_h5, batch_rows, logit_clip),
        desc="laplace tune",
        total=math.ceil(n_rows / batch_rows),
        leave=False,
    ):
        feats = flat_features(head, batch.inputs).reshape(-1, mean.numel() - 1)  # (n, C) f64
        labels = batch.gt_mask.reshape(-1).double()
        z = linear_logits(feats, mean.double())  # (n,)
        map_sum += float(F.binary_cross_entropy_with_logits(z, labels, reduction="sum"))
        # (grid x pixels) temporaries are bounded to ~GRID_CHUNK_ELEMENTS float64 each
        step = max(1, GRID_CHUNK_ELEMENTS // flat_var.shape[0])
        for start in range(0, feats.shape[0], step):
            chunk = slice(start, start + step)
            logit_var = logit_variance(feats[chunk], flat_var)  # (G, n)
            z_eff = probit_logits(z[chunk], logit_var)  # (G, n)
            nll_sum += F.binary_cross_entropy_with_logits(
                z_eff, labels[chunk].expand_as(z_eff), reduction="none"
            ).sum(1)
            var_sum += logit_var.sum(1)
        n_pixels += feats.shape[0]
    if n_pixels == 0:
        raise EmptySplitError(f"validation split {val_h5} is empty; cannot tune the posterior.")
    return {
        "val_nll": (nll_sum / n_pixels).reshape(grid_shape).numpy(),
        "mean_logit_variance": (var_sum / n_pixels).reshape(grid_shape).numpy(),
        "map_nll": map_sum / n_pixels,
        "n_pixels": n_pixels,
    }


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
