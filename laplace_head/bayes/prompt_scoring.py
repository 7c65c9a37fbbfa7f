"""Ranking candidate clicks by the epistemic uncertainty they would resolve.

Definition (used by :meth:`laplace_head.bayes.posterior.Posterior.score_prompts`)::

    score(c) = sum_u g(u - c) BALD(u) / sum_u g(u - c)

with ``g`` a Gaussian of standard deviation ``sigma`` (the prompt maps' sigma, so the
neighbourhood a click's Gaussian prompt map covers), truncated at 3 sigma and renormalised at
the image border: the mean mutual information (BALD, epistemic uncertainty) around ``c``. The
suggested label is the class the posterior predicts at ``c``: ``positive`` when the predictive
probability there is > 0.5, ``negative`` otherwise - the click that a user confirming or
correcting the prediction there would give if the prediction is right; when it is wrong, the
user flips it, which is exactly the most informative case. Candidates closer than
``min_distance`` (default 2 sigma) to a better one are suppressed, so the top suggestions point
at different regions rather than at neighbouring pixels of one blob.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.errors import LaplaceHeadError


class UncertaintyInputError(LaplaceHeadError, ValueError):
    """Inputs given to the uncertainty API have the wrong shape, dtype or range."""


@dataclass(frozen=True)
class PromptSuggestion:
    """One ranked candidate click: (x, y) on the input grid, its score and suggested label."""

    rank: int
    x: float
    y: float
    score: float
    label: str  # "positive" (p > 0.5 at the point) or "negative"
    p_foreground: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_prompts(
    bald_map: torch.Tensor,
    probability: torch.Tensor,
    candidates_xy: Any | None = None,
    sigma: float = 8.0,
    grid_stride: int = 16,
    top_k: int | None = None,
    min_distance: float | None = None,
) -> list[PromptSuggestion]:
    """Rank candidate clicks on one (H, W) BALD map (see the module docstring).

    Parameters
    ----------
    bald_map, probability
        (H, W) mutual information (nats) and predictive foreground probability.
    candidates_xy
        (M, 2) (x, y) pixel coordinates on the H x W grid (rounded to the nearest pixel);
        None uses a regular grid with ``grid_stride`` spacing.
    top_k
        Keep the best ``top_k`` (all when None).
    min_distance
        Greedy non-maximum suppression: a candidate closer than this (pixels) to a better
        ranked one is dropped, so the suggestions cover different regions. None means
        ``2 * sigma``; 0 keeps every candidate.

    Returns
    -------
    list of PromptSuggestion
        Sorted by decreasing score (ties keep the candidate order).
    """
    if sigma <= 0:
        raise UncertaintyInputError(f"sigma must be > 0; got {sigma}")
    height, width = bald_map.shape
    points = candidate_points(candidates_xy, height, width, grid_stride)
    smoothed = gaussian_neighbourhood_mean(bald_map, sigma)
    cols = torch.from_numpy(np.rint(points[:, 0]).astype(np.int64))
    rows = torch.from_numpy(np.rint(points[:, 1]).astype(np.int64))
    scores = smoothed[rows, cols].cpu().numpy()
    p_fg = probability[rows, cols].cpu().numpy()
    order = np.argsort(-scores, kind="stable")
    radius = 2.0 * sigma if min_distance is None else float(min_distance)
    if radius > 0:
        kept: list[int] = []
        for i in order:
            if all(np.hypot(*(points[i] - points[j])) >= radius for j in kept):
                kept.append(int(i))
            if top_k and len(kept) == top_k:
                break
        order = np.asarray(kept, dtype=np.int64)
    order = order[: top_k if top_k else None]
    return [
        PromptSuggestion(
            rank=rank,
            x=float(points[i, 0]),
            y=float(points[i, 1]),
            score=float(scores[i]),
            label="positive" if p_fg[i] > 0.5 else "negative",
            p_foreground=float(p_fg[i]),
        )
        for rank, i in enumerate(order)
    ]


def candidate_points(candidates_xy: Any, height: int, width: int, stride: int) -> np.ndarray:
    """(M, 2) float64 (x, y) candidates: validated ``candidates_xy`` or a regular grid."""
    if candidates_xy is None:
        if stride < 1:
            raise UncertaintyInputError(f"grid_stride must be >= 1; got {stride}")
        ys, xs = np.mgrid[stride // 2 : height : stride, stride // 2 : width : stride]
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    points = np.asarray(candidates_xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise UncertaintyInputError(
            f"candidates_xy must be a non-empty (M, 2) array of (x, y); got shape {points.shape}"
        )
    inside = (
        (points[:, 0] >= -0.5)
        & (points[:, 0] < width - 0.5)
        & (points[:, 1] >= -0.5)
        & (points[:, 1] < height - 0.5)
    )
    if not inside.all():
        bad = points[~inside][0].tolist()
        raise UncertaintyInputError(
            f"candidate {bad} lies outside the {width} x {height} input grid "
            "(coordinates are (x, y) pixels of the 256 x 256 maps; rescale_points converts)."
        )
    return points


def gaussian_neighbourhood_mean(value_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-weighted local mean of an (H, W) map (truncated at 3 sigma, border-normalised)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=value_map.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    stacked = torch.stack([value_map.double(), torch.ones_like(value_map, dtype=torch.float64)])
    blurred = stacked.unsqueeze(1)
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1), padding=(0, radius))
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return (blurred[0, 0] / blurred[1, 0]).float()
