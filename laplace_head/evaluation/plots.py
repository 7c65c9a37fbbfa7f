"""Figures of stage 7: reliability diagrams, uncertainty maps.

Every figure is drawn with matplotlib's Agg backend (no display needed) and saved atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from laplace_head.util.atomic import atomic_path  # noqa: E402

METHOD_COLORS = {
    "base": "tab:gray",
    "map": "tab:blue",
    "map_temperature_scaled": "tab:orange",
    "laplace": "tab:green",
}


def _save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_reliability(
    reliability: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "test split",
) -> None:
    """Reliability diagrams of the foreground probability, one panel per method.

    Parameters
    ----------
    reliability
        method -> {"bin_edges": (K+1,), "count": (K,), "mean_probability": (K,),
        "frequency": (K,), "ece": float}; empty bins hold NaN.
    """
    methods = list(reliability)
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.6 * max(1, len(methods)), 3.8))
    axes = np.atleast_1d(axes)
    for ax, method in zip(axes, methods):
        stats = reliability[method]
        edges = np.asarray(stats["bin_edges"], dtype=np.float64)
        centers = 0.5 * (edges[1:] + edges[:-1])
        frequency = np.asarray(stats["frequency"], dtype=np.float64)
        mean_p = np.asarray(stats["mean_probability"], dtype=np.float64)
        color = METHOD_COLORS.get(method, "tab:purple")
        ax.bar(
            centers,
            np.nan_to_num(frequency),
            width=np.diff(edges),
            color=color,
            alpha=0.55,
            edgecolor="black",
            lw=0.4,
            label="observed frequency",
        )
        ax.plot(mean_p, frequency, "o", color="black", ms=3, label="(mean p, frequency)")
        ax.plot([0, 1], [0, 1], ls="--", color="red", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted foreground probability")
        ax.set_title(f"{method}\nECE {stats['ece']:.4f}", fontsize=9)
    axes[0].set_ylabel("fraction foreground")
    if methods:
        axes[0].legend(fontsize=7, loc="lower right")
    else:
        axes[0].text(0.5, 0.5, "no test rows", ha="center", va="center")
    fig.suptitle(f"Reliability ({title}; equal-width bins of p(foreground))", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_uncertainty_examples(
    examples: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> None:
    """One row per example: image, GT, base logits, Laplace p, entropy, BALD + ranked prompts.

    Parameters
    ----------
    examples
        Each: "title" str, "image" (H, W, 3) uint8 or None, "gt" (H, W), "base_logits" (H, W),
        "probability" (H, W), "entropy" (H, W), "bald" (H, W) (nats), "prompts" list of
        Suggestion (interactive.clicks, top ranked first), optional "click_rule" (the rule that
        suggested them, named in the column title), optional "pos_map"/"neg_map" (H, W) prompt maps
        (their 0.5 contours mark the given clicks: green positive, red negative).
    """
    columns = (
        "image",
        "ground truth",
        "base logits",
        "Laplace p(fg)",
        "predictive entropy",
        "BALD + suggested clicks",
    )
    rules = sorted({str(e["click_rule"]) for e in examples if e.get("click_rule")})
    if rules:
        columns = (*columns[:-1], f"BALD + next clicks ({', '.join(rules)})")
    n_rows = max(1, len(examples))
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(2.6 * len(columns), 2.7 * n_rows))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not examples:
        axes[0, 0].text(0.5, 0.5, "no test rows", ha="center", va="center")
    for row, example in enumerate(examples):
        ax = axes[row]
        if example.get("image") is not None:
            ax[0].imshow(example["image"])
        else:
            ax[0].text(0.5, 0.5, "image not available", ha="center", va="center", fontsize=8)
        ax[1].imshow(example["gt"], cmap="gray", vmin=0, vmax=1)
        limit = float(np.nanmax(np.abs(example["base_logits"]))) or 1.0
        ax[2].imshow(example["base_logits"], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax[3].imshow(example["probability"], cmap="magma", vmin=0, vmax=1)
        ax[4].imshow(example["entropy"], cmap="inferno", vmin=0, vmax=np.log(2))
        ax[5].imshow(example["bald"], cmap="inferno")
        for axis in ax[1:4]:
            _draw_prompt_contours(axis, example.get("pos_map"), example.get("neg_map"))
        for suggestion in example.get("prompts", []):
            marker = "P" if suggestion.label == 1 else "X"
            color = "lime" if suggestion.label == 1 else "cyan"
            ax[5].plot(suggestion.x, suggestion.y, marker=marker, color=color, ms=9, mec="black")
            ax[5].text(
                suggestion.x + 4, suggestion.y, str(suggestion.rank + 1), color="white", fontsize=7
            )
        ax[0].set_ylabel(example.get("title", ""), fontsize=7)
    for axis, name in zip(axes[0], columns):
        axis.set_title(name, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _draw_prompt_contours(ax: plt.Axes, pos_map: Any, neg_map: Any) -> None:
    for prompt_map, color in ((pos_map, "lime"), (neg_map, "red")):
        if prompt_map is not None and np.nanmax(prompt_map) > 0.5:
            ax.contour(
                np.asarray(prompt_map, dtype=np.float32), levels=[0.5], colors=color, linewidths=1.0
            )
