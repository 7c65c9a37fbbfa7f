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

**An image head's split** (``training_data/image/<split>.h5``, written by
:func:`laplace_head.cache.packing.pack_image_split`) adds the image and copies none of the
above: ``logits_256``, ``pos_map``, ``neg_map``, ``gt_mask_256`` and ``index`` are HDF5 external
links to the same names in the seed head's file of the split (the file attribute ``base_split``,
a path relative to this file's folder, which HDF5 resolves from there), and

- ``image_256``: (S, 3, 256, 256) uint8 RGB, one per *sample* (not per prompt set), the image
  resized as the logits are (:func:`laplace_head.dataset.images.resize_image_grid`);
- ``image_row``: (N,) int64, the ``image_256`` entry of each row;
- ``image_sample_id``: (S,) strings, the sample of each entry;
- attributes ``head`` (``image``), ``n_images``, ``base_split`` and, copied from the base file,
  ``source_index_md5`` and ``segmenter_fingerprint``; :func:`open_split` refuses the file when
  its base file is missing or has been repacked since (another ``source_index_md5``).

The writer is :func:`laplace_head.cache.packing.pack_split`; everything that reads a split
(training, Laplace fit and tuning, evaluation, sanity panels) goes through this module, so the
model inputs are assembled the same way everywhere: ``[logits clipped to +-logit_clip, pos_map,
neg_map]`` with non-finite logits mapped into range first, then for an image split the image's
RGB normalised by :data:`IMAGE_MEAN` / :data:`IMAGE_STD` (:func:`assemble_inputs`).
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
from laplace_head.model.head_variant import SEED_HEAD, HeadVariant
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
# An image split: what it links to in its base file, and what it adds.
LINKED_NAMES = (*ARRAY_NAMES, "index")
IMAGE_ARRAY = "image_256"
IMAGE_ROW = "image_row"
IMAGE_SAMPLE_ID = "image_sample_id"
HEAD_ATTR = "head"
BASE_SPLIT_ATTR = "base_split"
# The image channels' normalisation, (value / 255 - mean) / std per RGB channel (ImageNet's).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


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
    if HEAD_ATTR in handle.attrs:
        try:
            _check_image_split(handle, path)
        except DataFileError:
            handle.close()
            raise
    return handle


def _check_image_split(handle: h5py.File, path: Path) -> None:
    """Refuse an image split whose base file is gone or repacked, or that lacks its images."""
    head = HeadVariant.parse(str(handle.attrs[HEAD_ATTR]), f"{path}: attribute {HEAD_ATTR}")
    base = path.parent / str(handle.attrs.get(BASE_SPLIT_ATTR, ""))
    fix = f"re-run pack_hdf5 for {base} and then for {path} (e.g. `snakemake {path}`)"
    try:
        logits = handle["logits_256"]
    except KeyError:
        raise DataFileError(
            f"{path} links its logits, prompt maps, masks and index to {base}, which cannot be "
            f"opened; {fix}."
        ) from None
    recorded = str(handle.attrs.get("source_index_md5", ""))
    current = str(logits.file.attrs.get("source_index_md5", ""))
    if recorded != current:
        raise DataFileError(
            f"{path} was packed against {base} with index MD5 {recorded}, but that file now "
            f"holds index MD5 {current} (repacked since); {fix}."
        )
    missing = [n for n in (IMAGE_ARRAY, IMAGE_ROW) if n not in handle] if head.needs_image else []
    if missing:
        raise DataFileError(
            f"{path} is a {head.value} head's split but lacks {', '.join(missing)}; {fix}."
        )


def split_head(handle: h5py.File) -> HeadVariant:
    """The head variant an open split's inputs are for (a file without the ``head``
    attribute: the seed head's)."""
    return HeadVariant.parse(str(handle.attrs.get(HEAD_ATTR, SEED_HEAD.value)))


def require_head(h5_path: str | os.PathLike, channels_in: int, user: str) -> HeadVariant:
    """The head variant of a split whose inputs a head with ``channels_in`` input channels
    reads (``user`` names that head for the message).

    Raises
    ------
    DataFileError
        The split holds another head's inputs (e.g. the no_image split given to an image head).
    """
    with open_split(h5_path) as handle:
        head = split_head(handle)
    if head.channels_in != channels_in:
        raise DataFileError(
            f"{h5_path} holds the {head.value} head's inputs ({head.channels_in} channels), but "
            f"{user} takes {channels_in} ({HeadVariant.of_channels(channels_in).value} head); "
            "give it the split of its own head (ProjectLayout.for_head(head).split_h5)."
        )
    return head


def read_row_images(handle: h5py.File, rows: np.ndarray) -> np.ndarray:
    """The ``image_256`` of ``rows`` (1-D int array, any order, repeats allowed) of an open
    image split, (B, 3, 256, 256) uint8, each sample's image read once."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    images = handle[IMAGE_ARRAY]
    if not len(rows):
        return np.empty((0, *images.shape[1:]), dtype=np.uint8)
    unique_rows, row_inverse = np.unique(rows, return_inverse=True)
    slots = handle[IMAGE_ROW][unique_rows][row_inverse.reshape(-1)]  # increasing: one read
    unique_slots, slot_inverse = np.unique(slots, return_inverse=True)
    read = np.stack([images[int(slot)] for slot in unique_slots])
    return read[slot_inverse.reshape(-1)]


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
    logits_256: np.ndarray,
    pos_map: np.ndarray,
    neg_map: np.ndarray,
    logit_clip: float,
    image_256: np.ndarray | None = None,
) -> np.ndarray:
    """The head's input batch (B, 3, H, W) float32 from (B, H, W) arrays of any float dtype,
    (B, 6, H, W) with ``image_256``.

    Channel 0 is the base logits with NaN set to 0 and the rest clipped to +-``logit_clip`` (in
    float32: the bound need not be a float16 value); channels 1-2 are the prompt maps. With
    ``image_256`` ((B, 3, H, W) uint8 RGB on the same grid, an image head's input), channels
    3-5 are its R, G, B as ``(value / 255 - IMAGE_MEAN) / IMAGE_STD``.
    """
    channels = 3 if image_256 is None else 6
    inputs = np.empty((logits_256.shape[0], channels, *logits_256.shape[1:]), dtype=np.float32)
    inputs[:, 0] = logits_256
    np.nan_to_num(inputs[:, 0], copy=False, nan=0.0)
    np.clip(inputs[:, 0], -logit_clip, logit_clip, out=inputs[:, 0])
    inputs[:, 1] = pos_map
    inputs[:, 2] = neg_map
    if image_256 is not None:
        if image_256.dtype != np.uint8 or image_256.shape != (len(inputs), 3, *inputs.shape[2:]):
            raise ValueError(
                f"image_256 must be (B, 3, H, W) = {(len(inputs), 3, *inputs.shape[2:])} uint8 "
                f"on the logits' grid; got {image_256.dtype} {tuple(image_256.shape)}"
            )
        mean = np.asarray(IMAGE_MEAN, np.float32).reshape(1, 3, 1, 1)
        scale = (255.0 * np.asarray(IMAGE_STD, np.float32)).reshape(1, 3, 1, 1)
        inputs[:, 3:] = image_256
        inputs[:, 3:] -= 255.0 * mean
        inputs[:, 3:] /= scale
    return inputs


@dataclass
class SplitBatch:
    """Consecutive rows ``[start, start + B)`` of a split HDF5."""

    start: int
    inputs: torch.Tensor  # (B, 3, H, W) float32 (an image split: (B, 6, H, W)), assemble_inputs
    raw_logits: torch.Tensor  # (B, H, W) float32, base segmenter logits as stored
    gt_mask: torch.Tensor  # (B, H, W) uint8 {0, 1}


def iter_split_batches(
    h5_path: str | os.PathLike, batch_rows: int, logit_clip: float
) -> Iterator[SplitBatch]:
    """Stream a packed split in row order, ``batch_rows`` rows at a time; an image split's
    inputs carry the image channels (:func:`assemble_inputs`).

    Memory stays at ``batch_rows`` x 7 bytes x H x W (10 with the image) whatever the split
    size.
    """
    with open_split(h5_path) as handle:
        n_rows = int(handle["logits_256"].shape[0])
        with_image = split_head(handle).needs_image
        for start in range(0, n_rows, batch_rows):
            rows = slice(start, min(start + batch_rows, n_rows))
            raw = handle["logits_256"][rows]
            images = None
            if with_image:
                images = read_row_images(handle, np.arange(rows.start, rows.stop))
            inputs = assemble_inputs(
                raw, handle["pos_map"][rows], handle["neg_map"][rows], logit_clip, images
            )
            yield SplitBatch(
                start,
                torch.from_numpy(inputs),
                torch.from_numpy(raw.astype(np.float32)),
                torch.from_numpy(handle[MASK_ARRAY][rows].astype(np.uint8)),
            )
