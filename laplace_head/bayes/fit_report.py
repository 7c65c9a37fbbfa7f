"""The report of a stage-6 fit: health warnings, the validation-NLL figure, tracking, a log line.

The numbers come from :mod:`laplace_head.bayes.tuning` and are recorded in posterior_meta.json
(:mod:`laplace_head.bayes.posterior_io`); this module says what they mean to a user.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laplace_head.bayes.tuning import COLLAPSE_RATIO
from laplace_head.layout import LAPLACE_STATE, VAL_NLL_GRID
from laplace_head.util.atomic import atomic_path

LOGGER = logging.getLogger(__name__)


def collapse_advice(tune: dict) -> str:
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
            f"validation-NLL cost {VAL_NLL_GRID} shows."
        )
    return (
        f"The marginal likelihood chose the prior precision {prior:g} at T = {temperature:g}: "
        "set a smaller laplace.fixed_temperature."
    )


def health_warnings(tune: dict, checks: dict, collapse: dict) -> list[str]:
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
            f"the feature norm, not the data. {collapse_advice(tune)}"
        )
    auroc = checks["bald_error_auroc"]
    if auroc is not None and auroc < 0.5:
        messages.append(
            f"validation BALD error-AUROC is {auroc:.3f} < 0.5: the epistemic uncertainty is "
            "anti-correlated with the predictive mask's errors, so clicking where BALD is high "
            "targets pixels that are already right. Try laplace.approx full or kron."
        )
    return messages


def write_grid_figure(folder: Path, meta: dict) -> None:
    """The validation-NLL grid of a fit's meta as ``VAL_NLL_GRID`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = meta["grid"]
    plot_val_nll_grid(
        np.asarray(grid["val_nll"]),
        grid["prior_precision"],
        grid["temperature"],
        tuple(grid["chosen_index"]),
        meta["val_nll_map"],
        folder / VAL_NLL_GRID,
    )


def plot_val_nll_grid(
    val_nll: np.ndarray,
    prior_grid: Sequence[float],
    temperature_grid: Sequence[float],
    chosen: tuple[int, int],
    map_nll: float,
    path: str | os.PathLike,
) -> None:
    """Heatmap of validation pixel NLL over (prior precision x temperature) + NLL vs T curves
    (NLL vs prior precision when the grid has one T).

    Parameters
    ----------
    val_nll
        (P, T) mean validation NLL (nats per pixel); rows follow ``prior_grid``.
    chosen
        (row, column) of the selected pair, marked with a white box.
    map_nll
        NLL of the MAP head (no posterior variance), drawn as a reference line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_nll = np.asarray(val_nll, dtype=np.float64)
    fig, (ax_map, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.8))
    image = ax_map.imshow(val_nll, cmap="viridis_r", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax_map, label="val NLL (nats / pixel)")
    ax_map.set_xticks(range(len(temperature_grid)), [f"{t:g}" for t in temperature_grid])
    ax_map.set_yticks(range(len(prior_grid)), [f"{p:g}" for p in prior_grid])
    ax_map.set_xlabel("likelihood temperature T")
    ax_map.set_ylabel("prior precision")
    threshold = val_nll.min() + 0.5 * (val_nll.max() - val_nll.min())
    best = val_nll.min()
    for (i, j), value in np.ndenumerate(val_nll):
        color = "black" if value < threshold else "white"
        text = f"{value:.4f}\n+{value - best:.1e}"
        ax_map.text(j, i, text, ha="center", va="center", fontsize=6.5, color=color)
    ax_map.add_patch(
        plt.Rectangle(
            (chosen[1] - 0.5, chosen[0] - 0.5), 1, 1, fill=False, edgecolor="white", lw=2.5
        )
    )
    ax_map.set_title("val NLL and excess over the best (box: chosen)")
    if len(temperature_grid) == 1:
        # T fixed (laplace.tuning fixed_temperature / marglik): the curve over the prior
        ax_curve.plot(prior_grid, val_nll[:, 0], marker="o", color="tab:green", label="posterior")
        ax_curve.plot(
            prior_grid[chosen[0]],
            val_nll[chosen],
            marker="s",
            ms=11,
            mfc="none",
            color="black",
            ls="none",
            label="chosen",
        )
        ax_curve.set_xlabel("prior precision")
        ax_curve.set_title(f"T fixed at {temperature_grid[0]:g}: val NLL vs prior precision")
    else:
        for i, prior in enumerate(prior_grid):
            ax_curve.plot(temperature_grid, val_nll[i], marker="o", label=f"prior {prior:g}")
        ax_curve.set_xlabel("likelihood temperature T")
        ax_curve.set_title("val NLL vs likelihood temperature T, per prior precision")
    ax_curve.axhline(map_nll, color="black", ls="--", label=f"MAP head {map_nll:.4f}")
    ax_curve.set_xscale("log")
    ax_curve.set_ylabel("val NLL (nats / pixel)")
    ax_curve.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def log_summary(meta: dict) -> None:
    """One line: the variant, the chosen hyperparameters and the validation figures."""
    posterior, auroc = meta["posterior"], meta["val_bald_error_auroc"]
    LOGGER.info(
        "%s/%s, tuning %s: prior precision %g, temperature %g: val NLL %.5f (MAP head %.5f), "
        "val BALD error-AUROC %.3f",
        posterior["target_layer"],
        posterior["approx"],
        posterior["tuning"],
        meta["prior_precision"],
        meta["temperature"],
        meta["val_nll"],
        meta["val_nll_map"],
        auroc if auroc is not None else float("nan"),
    )


def track(tracker: Any, meta: dict, out_dir: Path, run_id: str | None) -> None:
    """Log the grid, the choice, the figure and the state to a tracker (None: nothing)."""
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
    tracker.log_image("laplace/val_nll_grid", out_dir / VAL_NLL_GRID)
    tracker.log_artifact(
        out_dir / LAPLACE_STATE,
        name=f"laplace_{run_id or 'run'}",
        artifact_type="laplace_posterior",
    )
