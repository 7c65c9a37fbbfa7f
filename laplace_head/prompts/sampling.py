"""Seeded point-prompt sampling (stage 2) and Gaussian prompt maps (stage 3).

Coordinates are ``(x, y)`` in pixels of the original image: ``x`` is the column, ``y`` the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laplace_head.settings import GRID_SIZE
from laplace_head.util.seeding import derive_seed


@dataclass(frozen=True)
class PromptSet:
    """One prompt set: ``k`` positive and ``k`` negative points, (x, y) original-image pixels."""

    promptset_id: int
    pos_points: list[tuple[int, int]]
    neg_points: list[tuple[int, int]]

    @property
    def k(self) -> int:
        return len(self.pos_points)

    def to_json(self) -> dict:
        return {
            "promptset_id": self.promptset_id,
            "k": self.k,
            "pos_points": [list(p) for p in self.pos_points],
            "neg_points": [list(p) for p in self.neg_points],
        }

    @classmethod
    def from_json(cls, record: dict) -> PromptSet:
        return cls(
            promptset_id=int(record["promptset_id"]),
            pos_points=[(int(x), int(y)) for x, y in record["pos_points"]],
            neg_points=[(int(x), int(y)) for x, y in record["neg_points"]],
        )


def _choose_pixels(rng: np.random.Generator, flat_indices: np.ndarray, k: int) -> np.ndarray:
    # Without replacement when the region is large enough; a region smaller than k (e.g. a
    # single foreground pixel) repeats points rather than failing.
    replace = flat_indices.size < k
    return rng.choice(flat_indices, size=k, replace=replace)


def sample_promptsets(
    mask: np.ndarray,
    sample_id: str,
    num_promptsets: int,
    min_pairs: int,
    max_pairs: int,
    prompt_seed: int,
    first_click_promptsets: int = 0,
) -> list[PromptSet]:
    """Sample ``num_promptsets`` prompt sets for one sample (plus the first-click ones).

    Parameters
    ----------
    mask
        (H, W) boolean foreground mask at the image's size (resize it first).
    sample_id
        Canonical id ``<class>/<stem>``; with ``prompt_seed`` it seeds the draws, so the result
        does not depend on processing order, shard or worker.
    num_promptsets, min_pairs, max_pairs
        Each prompt set has ``k ~ Uniform{min_pairs..max_pairs}`` positive points on foreground
        pixels and ``k`` negative points on background pixels.
    first_click_promptsets
        Extra sets in the interactive first-click regime, after the regular ones (whose draws
        they do not change): one positive point on a uniformly drawn foreground pixel and no
        negative point, the shape of an interactive session's first click.

    Raises
    ------
    ValueError
        If the mask has no foreground or no background pixel.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W); got shape {mask.shape}")
    if min_pairs < 1 or max_pairs < min_pairs:
        raise ValueError(f"need 1 <= min_pairs <= max_pairs; got {min_pairs}, {max_pairs}")
    flat = mask.ravel()
    foreground = np.flatnonzero(flat)
    background = np.flatnonzero(~flat)
    if foreground.size == 0:
        raise ValueError("mask has no foreground pixel")
    if background.size == 0:
        raise ValueError("mask has no background pixel")
    width = mask.shape[1]
    rng = np.random.default_rng(derive_seed(prompt_seed, sample_id))
    promptsets = []
    for promptset_id in range(num_promptsets):
        k = int(rng.integers(min_pairs, max_pairs + 1))
        pos = _choose_pixels(rng, foreground, k)
        neg = _choose_pixels(rng, background, k)
        promptsets.append(
            PromptSet(
                promptset_id=promptset_id,
                pos_points=[(int(i % width), int(i // width)) for i in pos],
                neg_points=[(int(i % width), int(i // width)) for i in neg],
            )
        )
    for offset in range(first_click_promptsets):
        (pixel,) = _choose_pixels(rng, foreground, 1)
        promptsets.append(
            PromptSet(num_promptsets + offset, [(int(pixel % width), int(pixel // width))], [])
        )
    return promptsets


def rescale_points(
    points_xy: np.ndarray, image_hw: tuple[int, int], size: int = GRID_SIZE
) -> np.ndarray:
    """Map (x, y) pixel centres of an (H, W) image onto a ``size`` x ``size`` grid.

    Pixel centres are aligned (``x' = (x + 0.5) * size / W - 0.5``), the same convention as
    resizing the logits with ``align_corners=False``. Returns float coordinates (N, 2).
    """
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    height, width = image_hw
    scale = np.array([size / width, size / height])
    return (points + 0.5) * scale - 0.5


def gaussian_prompt_map(
    points_xy_256: np.ndarray, sigma: float, size: int = GRID_SIZE
) -> np.ndarray:
    """Sum of isotropic Gaussians (peak 1, std ``sigma`` px) at the points, clamped to [0, 1].

    Parameters
    ----------
    points_xy_256
        (N, 2) float (x, y) coordinates on the ``size`` grid (see :func:`rescale_points`).

    Returns
    -------
    numpy.ndarray
        (size, size) float16 map.
    """
    points = np.asarray(points_xy_256, dtype=np.float64).reshape(-1, 2)
    axis = np.arange(size, dtype=np.float64)
    gx = _gaussian_profile(axis, points[:, :1], sigma)  # (N, size) along x, one row per point
    gy = _gaussian_profile(axis, points[:, 1:], sigma)
    total = gy.T @ gx  # sum over points of outer(gy, gx): the separable Gaussians
    return nonnegative_to_float16(np.clip(total, 0.0, 1.0))


#: The smallest normal float16, 2**-14; below it float16 steps by 2**-24 (its subnormals).
_FLOAT16_TINY = 2.0**-14


def nonnegative_to_float16(values: np.ndarray) -> np.ndarray:
    """``values.astype(np.float16)`` for finite values in [0, 65504], bit for bit, ~20x faster
    on a prompt map.

    NumPy converts a value that becomes a float16 subnormal (or 0) element by element (~100 ns
    each), and a Gaussian map is mostly tail. Below :data:`_FLOAT16_TINY` the float16 is
    ``k * 2**-24`` with ``k = rint(v * 2**24)`` (round half to even, as NumPy rounds), whose
    bit pattern is ``k`` itself (``k = 1024`` is 2**-14's); the rest converts through NumPy's
    fast path."""
    values = np.asarray(values, dtype=np.float64)
    small = values < _FLOAT16_TINY
    normal = np.where(small, 0.0, values).astype(np.float16)
    steps = np.rint(np.where(small, values, 0.0) * 2.0**24).astype(np.uint16)
    return (normal.view(np.uint16) | steps).view(np.float16)


def _gaussian_profile(axis: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    """``exp(-(axis - centre)^2 / (2 sigma^2))``, broadcast (one row per centre)."""
    return np.exp(-((axis - centre) ** 2) / (2.0 * sigma**2))
