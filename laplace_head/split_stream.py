"""Streaming a packed split HDF5 in row batches (bounded memory, row order kept).

Stages 6 and 7 need every pixel's trunk features, the raw base-segmenter logits and the ground
truth, a split at a time; reading ``batch_rows`` consecutive rows per step keeps memory at
``batch_rows`` x 7 bytes x H x W whatever the split size. The logits input channel is clipped
to +-logit_clip exactly as :mod:`laplace_head.data` does for training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from laplace_head.data import ARRAY_NAMES, DataFileError


@dataclass
class SplitBatch:
    """Consecutive rows ``[start, start + B)`` of a split HDF5."""

    start: int
    inputs: torch.Tensor  # (B, 3, H, W) float32, logits clipped
    raw_logits: torch.Tensor  # (B, H, W) float32, base segmenter logits as stored
    gt_mask: torch.Tensor  # (B, H, W) uint8 {0, 1}


def open_split(h5_path: str | os.PathLike) -> h5py.File:
    """Open a packed split HDF5 read-only, checking that it has the stage 4.5 datasets."""
    path = Path(h5_path)
    if not path.is_file():
        raise DataFileError(
            f"split file {str(path)!r} does not exist; build it first (rule pack_hdf5)."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(
            f"cannot read {str(path)!r} as HDF5 ({exc}); re-run pack_hdf5."
        ) from exc
    missing = [name for name in ARRAY_NAMES if name not in handle]
    if missing:
        handle.close()
        raise DataFileError(f"{path} lacks dataset(s) {', '.join(missing)}; re-run pack_hdf5.")
    return handle


def split_shape(h5_path: str | os.PathLike) -> tuple[int, int, int]:
    """(rows, H, W) of a split HDF5 (rows may be 0)."""
    with open_split(h5_path) as handle:
        n_rows, height, width = (int(s) for s in handle["logits_256"].shape)
    return n_rows, height, width


def split_num_rows(h5_path: str | os.PathLike) -> int:
    """Rows of a split HDF5 (0 for an empty split)."""
    return split_shape(h5_path)[0]


def iter_split_batches(
    h5_path: str | os.PathLike, batch_rows: int, logit_clip: float
) -> Iterator[SplitBatch]:
    """Stream a packed split in row order, ``batch_rows`` rows at a time (bounded memory)."""
    with open_split(h5_path) as handle:
        n_rows = int(handle["logits_256"].shape[0])
        for start in range(0, n_rows, batch_rows):
            stop = min(start + batch_rows, n_rows)
            raw = torch.from_numpy(handle["logits_256"][start:stop].astype(np.float32))
            pos = torch.from_numpy(handle["pos_map"][start:stop].astype(np.float32))
            neg = torch.from_numpy(handle["neg_map"][start:stop].astype(np.float32))
            clipped = raw.nan_to_num(0.0).clamp(-logit_clip, logit_clip)
            gt = torch.from_numpy(handle["gt_mask_256"][start:stop].astype(np.uint8))
            yield SplitBatch(start, torch.stack([clipped, pos, neg], dim=1), raw, gt)
