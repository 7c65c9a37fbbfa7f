"""Stable assignment of a split's samples to shard jobs.

Within a split, samples are sorted by ``sample_id``; sample ``i`` goes to shard
``i // shard_size``. Shards are named with four digits (``0000``). Because every shard job skips
per-sample work that is already on disk, adding samples later (which can move samples between
shards) only re-runs cheap shard jobs; it never recomputes a finished prompt set.
"""

from __future__ import annotations

import math

import pandas as pd

from laplace_head.layout import SHARD_FORMAT


def num_shards(n_samples: int, shard_size: int) -> int:
    """Number of shards for ``n_samples`` (0 for an empty split)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1; got {shard_size}")
    return math.ceil(n_samples / shard_size)


def shard_names(n_samples: int, shard_size: int) -> list[str]:
    """Names (``0000``, ``0001``, ...) of the shards of a split with ``n_samples`` samples."""
    return [SHARD_FORMAT.format(i) for i in range(num_shards(n_samples, shard_size))]


def shard_rows(split_frame: pd.DataFrame, shard: str | int, shard_size: int) -> pd.DataFrame:
    """The rows of ``split_frame`` (one split's manifest) that belong to ``shard``."""
    index = int(shard)
    ordered = split_frame.sort_values("sample_id", kind="mergesort").reset_index(drop=True)
    if index < 0 or index >= max(num_shards(len(ordered), shard_size), 1):
        raise ValueError(
            f"shard {shard!r} does not exist: the split has {len(ordered)} samples, "
            f"i.e. {num_shards(len(ordered), shard_size)} shards of {shard_size}"
        )
    return ordered.iloc[index * shard_size : (index + 1) * shard_size].reset_index(drop=True)
