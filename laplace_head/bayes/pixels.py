"""Pixels of a packed split as the observations of stage 6: seeded subsets, streamed by rows.

Every pixel is one Bernoulli observation. The fit (training split) and the tuning (validation
split) both stream a split ``batch_rows`` rows at a time and, when capped, take the same seeded
uniform subset of ``per_row`` pixels from every row (:func:`pixel_subset`); :func:`sampled_batches`
is that one loop. :class:`PixelStream` turns it into the (inputs, labels) chunks laplace-torch
fits on: the trunk features of each pixel (:func:`flat_features`, the final conv's inputs) or
its 5x5 input patch (:func:`pixel_patches`, the inputs of
:class:`~laplace_head.bayes.laplace_torch.PatchHead`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset
from tqdm import tqdm

from laplace_head.cache.split_h5 import SplitBatch, iter_split_batches, split_num_rows
from laplace_head.model.head import NoImageHead
from laplace_head.util.seeding import derive_seed


def pixel_subset(row: int, n_pixels: int, per_row: int, seed: int) -> np.ndarray | None:
    """Sorted flat pixel indices of ``row`` that enter the computation (None = every pixel)."""
    if per_row >= n_pixels:
        return None
    rng = np.random.default_rng(derive_seed(seed, "laplace_fit_pixels", row))
    return np.sort(rng.choice(n_pixels, size=per_row, replace=False))


def pixels_per_row(n_rows: int, n_pixels: int, max_pixels: int | None) -> int:
    """Pixels taken from every row so that at most ``max_pixels`` are used in total."""
    if max_pixels is None or n_rows * n_pixels <= max_pixels:
        return n_pixels
    return max(1, max_pixels // n_rows)


def sampled_batches(
    h5_path: str | Path, batch_rows: int, logit_clip: float, per_row: int, seed: int, desc: str
) -> Iterator[tuple[SplitBatch, list[np.ndarray | None]]]:
    """Each batch of a split with the :func:`pixel_subset` of each of its rows (progress bar
    ``desc``)."""
    n_rows = split_num_rows(h5_path)
    batches = iter_split_batches(h5_path, batch_rows, logit_clip)
    for batch in tqdm(batches, total=math.ceil(n_rows / batch_rows), desc=desc, leave=False):
        n_pixels = batch.gt_mask[0].numel()
        rows = range(batch.start, batch.start + batch.gt_mask.shape[0])
        yield batch, [pixel_subset(row, n_pixels, per_row, seed) for row in rows]


def take(values: torch.Tensor, subset: np.ndarray | None) -> torch.Tensor:
    """``values`` (n_pixels, ...) at the pixels of ``subset`` (all when None)."""
    return values if subset is None else values[subset]


def flat_features(head: NoImageHead, inputs: torch.Tensor) -> torch.Tensor:
    """Trunk features of (B, 3, H, W) inputs as (B, H*W, C) float64."""
    with torch.no_grad():
        feats = head.features(inputs)
    return feats.flatten(2).transpose(1, 2).double()


def pixel_patches(inputs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) head inputs -> (B, H*W, C + 1, 5, 5) zero-padded patches + indicator."""
    batch, channels, height, width = inputs.shape
    inside = inputs.new_ones(batch, 1, height, width)
    stacked = torch.cat([inputs, inside], dim=1)
    patches = F.unfold(stacked, 5, padding=2)  # (B, (C + 1) * 25, H * W)
    return patches.transpose(1, 2).reshape(batch, height * width, channels + 1, 5, 5)


class PixelStream(IterableDataset):
    """(per-pixel inputs (n, ...) float64, labels (n,) int64) chunks of a split, a row batch at
    a time; ``per_pixel`` maps (B, 3, H, W) head inputs to (B, H*W, ...) pixel inputs.

    ``len()`` is the number of pixels used (laplace-torch reads it as ``n_data``).
    """

    def __init__(
        self,
        per_pixel: Callable[[torch.Tensor], torch.Tensor],
        h5_path: str | Path,
        logit_clip: float,
        per_row: int,
        seed: int,
        batch_rows: int,
    ) -> None:
        self.per_pixel, self.h5_path, self.logit_clip = per_pixel, Path(h5_path), logit_clip
        self.per_row, self.seed, self.batch_rows = per_row, seed, batch_rows
        self.n_rows = split_num_rows(h5_path)

    def __len__(self) -> int:
        return self.n_rows * self.per_row

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, subsets in sampled_batches(
            self.h5_path, self.batch_rows, self.logit_clip, self.per_row, self.seed, "laplace fit"
        ):
            pixels = self.per_pixel(batch.inputs)
            labels = batch.gt_mask.flatten(1).long()
            yield (
                torch.cat([take(p, s) for p, s in zip(pixels, subsets, strict=True)]),
                torch.cat([take(y, s) for y, s in zip(labels, subsets, strict=True)]),
            )
