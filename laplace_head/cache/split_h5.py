"""The packed split HDF5 (stage 4.5 output): its names, and the one way to open and read it.

Layout (``format_version`` 1), rows in index-CSV order:

- ``logits_256``, ``pos_map``, ``neg_map``: (N, 256, 256) float16, copied bit for bit from the
  stage-3 ``.npy`` files (logits are *not* clipped on disk: :func:`assemble_inputs` clips).
- ``gt_mask_256``: (N, 256, 256) uint8 in {0, 1}.
- ``index/``: one 1-D dataset per index column (strings variable-length UTF-8, ints int64,
  floats float64); the group attribute ``columns`` keeps the column order.
- File attributes: ``format_version``, ``split``, ``n_rows``, ``source_index_md5``, ``chunks``,
  ``compression`` and, when the packer was given it, ``segmenter_fingerprint``: the JSON of
  :func:`laplace_head.settings.segmenter_fingerprint` of the settings that made the rows
  (:func:`write_segmenter_fingerprint`, :func:`read_segmenter_fingerprint`).

The writer is :func:`laplace_head.cache.packing.pack_split`; everything that reads a split
(training, Laplace fit and tuning, evaluation, sanity panels) goes through this module, so the
model inputs are assembled the same way everywhere: ``[logits clipped to +-logit_clip, pos_map,
neg_map]`` with non-finite logits mapped into range first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from laplace_head.errors import LaplaceHeadError
from laplace_head.settings import GRID_SIZE

FORMAT_VERSION = 1
# Array dataset -> the index column that names its stage-3 source file.
INPUT_ARRAYS = {
    "logits_256": "logits_256_path",
    "pos_map": "pos_map_path",
    "neg_map": "neg_map_path",
}
MASK_ARRAY = "gt_mask_256"
SEGMENTER_FINGERPRINT_ATTR = "segmenter_fingerprint"
ARRAY_NAMES = (*INPUT_ARRAYS, MASK_ARRAY)
ARRAY_SHAPE = (GRID_SIZE, GRID_SIZE)
BYTES_PER_PIXEL = 2 + 2 + 2 + 1  # three float16 maps + one uint8 mask


class DataFileError(LaplaceHeadError):
    """A split HDF5 is missing, unreadable or not in the packed layout."""


def open_split(h5_path: str | os.PathLike) -> h5py.File:
    """Open a packed split HDF5 read-only, checking that it has the four array datasets.

    Raises
    ------
    DataFileError
        When the file is missing, unreadable, or lacks a dataset of the packed layout.
    """
    path = Path(h5_path)
    if not path.is_file():
        raise DataFileError(
            f"split file {str(path)!r} does not exist; build it first (rule pack_hdf5, "
            "e.g. `snakemake split_train`)."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(
            f"cannot read {str(path)!r} as HDF5 ({exc}); delete it and re-run pack_hdf5."
        ) from exc
    missing = [name for name in ARRAY_NAMES if name not in handle]
    if missing:
        handle.close()
        raise DataFileError(
            f"{path} lacks dataset(s) {', '.join(missing)}; it was not written by pack_hdf5 of "
            "this workflow. Delete it and re-run pack_hdf5."
        )
    return handle


def split_fingerprint(handle: h5py.File) -> dict:
    """What identifies an open split's content: its rows and the MD5 of the index CSV it was
    packed from (training refuses to resume on other data; the Laplace fit reuses on the same)."""
    return {
        "n_rows": int(handle["logits_256"].shape[0]),
        "source_index_md5": str(handle.attrs.get("source_index_md5", "")),
    }


def write_segmenter_fingerprint(handle: h5py.File, fingerprint: Mapping[str, Any]) -> None:
    """Record the segmenter fingerprint of a split's rows in its file attributes."""
    handle.attrs[SEGMENTER_FINGERPRINT_ATTR] = json.dumps(dict(fingerprint), sort_keys=True)


def read_segmenter_fingerprint(handle: h5py.File) -> dict | None:
    """The segmenter fingerprint an open split records, or None when it records none.

    Raises
    ------
    DataFileError
        The attribute is not the JSON object :func:`write_segmenter_fingerprint` writes.
    """
    text = handle.attrs.get(SEGMENTER_FINGERPRINT_ATTR)
    if text is None:
        return None
    try:
        fingerprint = json.loads(text)
    except (TypeError, ValueError) as exc:
        fingerprint = exc
    if not isinstance(fingerprint, dict):
        raise DataFileError(
            f"{handle.filename}: attribute {SEGMENTER_FINGERPRINT_ATTR} is not a JSON object "
            f"({text!r:.80}); delete the file and re-run pack_hdf5."
        )
    return fingerprint


def write_h5_index(group: h5py.Group, index: pd.DataFrame) -> None:
    """Store ``index`` column by column in ``group`` (the inverse of :func:`read_h5_index`)."""
    string_dtype = h5py.string_dtype(encoding="utf-8")
    for column in index.columns:
        values = index[column]
        if pd.api.types.is_integer_dtype(values):
            group.create_dataset(column, data=values.to_numpy(dtype=np.int64))
        elif pd.api.types.is_float_dtype(values):
            group.create_dataset(column, data=values.to_numpy(dtype=np.float64))
        else:
            data = np.array([str(v) for v in values], dtype=object)
            group.create_dataset(column, data=data, dtype=string_dtype, shape=(len(data),))
    group.attrs["columns"] = list(index.columns)


def read_h5_index(h5_path: str | os.PathLike) -> pd.DataFrame:
    """The ``index/`` group of a packed split as a DataFrame (columns in CSV order).

    Strings come back as Python ``str``, ints as int64, floats as float64; an empty split gives
    an empty frame with the same columns. Rows are in HDF5 row order.
    """
    with open_split(h5_path) as handle:
        group = handle["index"]
        columns = [str(c) for c in group.attrs.get("columns", list(group.keys()))]
        data = {}
        for column in columns:
            dataset = group[column]
            if h5py.check_string_dtype(dataset.dtype) is not None:
                data[column] = pd.Series(list(dataset.asstr()[()]), dtype=str)
            else:
                data[column] = pd.Series(dataset[()])
    return pd.DataFrame(data, columns=columns)


def split_shape(h5_path: str | os.PathLike) -> tuple[int, int, int]:
    """(rows, H, W) of a split HDF5 (rows may be 0)."""
    with open_split(h5_path) as handle:
        n_rows, height, width = (int(s) for s in handle["logits_256"].shape)
    return n_rows, height, width


def split_num_rows(h5_path: str | os.PathLike) -> int:
    """Rows of a split HDF5 (0 for an empty split)."""
    return split_shape(h5_path)[0]


def assemble_inputs(
    logits_256: np.ndarray, pos_map: np.ndarray, neg_map: np.ndarray, logit_clip: float
) -> np.ndarray:
    """The head's input batch (B, 3, H, W) float32 from (B, H, W) arrays of any float dtype.

    Channel 0 is the base logits with NaN set to 0 and the rest clipped to +-``logit_clip`` (in
    float32: the bound need not be a float16 value); channels 1-2 are the prompt maps.
    """
    inputs = np.empty((logits_256.shape[0], 3, *logits_256.shape[1:]), dtype=np.float32)
    inputs[:, 0] = logits_256
    np.nan_to_num(inputs[:, 0], copy=False, nan=0.0)
    np.clip(inputs[:, 0], -logit_clip, logit_clip, out=inputs[:, 0])
    inputs[:, 1] = pos_map
    inputs[:, 2] = neg_map
    return inputs


@dataclass
class SplitBatch:
    """Consecutive rows ``[start, start + B)`` of a split HDF5."""

    start: int
    inputs: torch.Tensor  # (B, 3, H, W) float32, see assemble_inputs
    raw_logits: torch.Tensor  # (B, H, W) float32, base segmenter logits as stored
    gt_mask: torch.Tensor  # (B, H, W) uint8 {0, 1}


def iter_split_batches(
    h5_path: str | os.PathLike, batch_rows: int, logit_clip: float
) -> Iterator[SplitBatch]:
    """Stream a packed split in row order, ``batch_rows`` rows at a time.

    Memory stays at ``batch_rows`` x 7 bytes x H x W whatever the split size.
    """
    with open_split(h5_path) as handle:
        n_rows = int(handle["logits_256"].shape[0])
        for start in range(0, n_rows, batch_rows):
            rows = slice(start, min(start + batch_rows, n_rows))
            raw = handle["logits_256"][rows]
            inputs = assemble_inputs(
                raw, handle["pos_map"][rows], handle["neg_map"][rows], logit_clip
            )
            yield SplitBatch(
                start,
                torch.from_numpy(inputs),
                torch.from_numpy(raw.astype(np.float32)),
                torch.from_numpy(handle[MASK_ARRAY][rows].astype(np.uint8)),
            )
