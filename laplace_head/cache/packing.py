"""Stage 4.5: pack one split's index and arrays into a single HDF5 file.

The file layout is defined in :mod:`laplace_head.cache.split_h5` (the one reader). The ground
truth is read with :func:`laplace_head.dataset.images.load_mask` and resized **directly from its
own size** to 256x256 with nearest-neighbour sampling; the logits were resized from the image
size, so when a mask's size differs from its image's the two grids agree up to
nearest-neighbour rounding. Training never opens the original files.

The writer streams: it holds at most one chunk of rows (``chunk_rows`` x 448 KiB; one row when
contiguous) in memory and writes whole chunks, so memory does not grow with N. The file is
written under a temporary name and renamed.

Default layout, chosen with ``bench/bench_packing.py`` (numbers in the README): **contiguous,
uncompressed**. The training Dataset reads shuffled rows, one at a time or a sorted batch with
one fancy-index read per dataset. Contiguous storage was the fastest for both patterns; with
chunked storage HDF5's fancy-index reads were ~100x slower (tens of rows/s), and compression
(lzf 2.5x, gzip-1 4.5x smaller) cost another 10-20x on random reads. Chunking and compression
stay available (``chunk_rows``/``compression``) for disk-bound setups.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from laplace_head.cache.index import INDEX_COLUMNS, read_index
from laplace_head.cache.split_h5 import (
    ARRAY_SHAPE,
    BASE_SPLIT_ATTR,
    FORMAT_VERSION,
    HEAD_ATTR,
    IMAGE_ARRAY,
    IMAGE_ROW,
    IMAGE_SAMPLE_ID,
    INPUT_ARRAYS,
    LINKED_NAMES,
    MASK_ARRAY,
    SEGMENTER_FINGERPRINT_ATTR,
    open_split,
    write_h5_index,
    write_segmenter_fingerprint,
)
from laplace_head.dataset.images import (
    ImageReadError,
    load_image_rgb,
    load_mask,
    resize_image_grid,
    resize_mask_nearest,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head_variant import HeadVariant
from laplace_head.util.atomic import atomic_path, file_md5, load_npy_safe, remove_stale_temp_files
from laplace_head.util.faults import fault_point

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS: int | None = None  # contiguous
DEFAULT_COMPRESSION = "none"
COMPRESSION_PATTERN = re.compile(r"none|lzf|gzip-[1-9]")  # matched as a whole (fullmatch)
VALID_COMPRESSIONS = "none, lzf, gzip-1 ... gzip-9"


class PackingError(LaplaceHeadError):
    """An array listed in the index cannot be packed (missing, corrupt, wrong shape)."""


def compression_kwargs(compression: str) -> dict:
    """h5py ``create_dataset`` keyword arguments for a compression name.

    ``none``, ``lzf`` or ``gzip-<level>`` (gzip with the byte-shuffle filter, which groups the
    high and low bytes of float16 values and compresses them better).

    Raises
    ------
    ValueError
        For any other name (the message lists the valid ones).
    """
    if not isinstance(compression, str) or not COMPRESSION_PATTERN.fullmatch(compression):
        raise ValueError(f"compression must be one of {VALID_COMPRESSIONS}; got {compression!r}")
    if compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    return {"compression": "gzip", "compression_opts": int(compression[5:]), "shuffle": True}


def _load_array(path: str) -> np.ndarray:
    try:
        array = load_npy_safe(path)
    except (OSError, ValueError, EOFError) as exc:
        raise PackingError(
            f"cannot read {path!r} ({type(exc).__name__}: {exc}); the index lists it as "
            "complete - re-run precompute_sam and build_training_index for this split."
        ) from exc
    if array.shape != ARRAY_SHAPE or array.dtype != np.float16:
        raise PackingError(
            f"{path!r} holds {array.dtype} {array.shape}; expected float16 (256, 256). "
            "Delete it and re-run precompute_sam and build_training_index."
        )
    return array


def _load_gt_256(mask_path: str) -> np.ndarray:
    try:
        mask = load_mask(mask_path)
    except ImageReadError as exc:
        raise PackingError(
            f"ground-truth mask {mask_path!r}: {exc}. Fix or remove the file and re-run from "
            "build_manifests."
        ) from exc
    return resize_mask_nearest(mask, *ARRAY_SHAPE).astype(np.uint8)


def _split_name(index: pd.DataFrame, index_csv: Path, split: str | None) -> str:
    if split is not None:
        return split
    values = sorted(set(index["split"]))
    if len(values) != 1:
        raise PackingError(
            f"index {str(index_csv)!r} holds the splits {values}; pass the split to pack "
            "(exactly one split per file)"
        )
    return str(values[0])


def pack_split(
    index_csv: str | os.PathLike,
    out_h5: str | os.PathLike,
    split: str | None = None,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    compression: str = DEFAULT_COMPRESSION,
    progress: bool = True,
    segmenter_fingerprint: Mapping[str, Any] | None = None,
) -> dict:
    """Pack the arrays and index of one split into ``out_h5`` (atomic, streaming).

    Parameters
    ----------
    index_csv
        The stage-4 index (``<split>_index.csv``); may have no rows.
    out_h5
        Destination HDF5 path; written to a temporary name beside it, then renamed.
    split
        Recorded in the ``split`` attribute; defaults to the index's ``split`` column (or the
        file name for an empty index).
    chunk_rows
        Rows per HDF5 chunk of every array dataset (chunk shape ``(chunk_rows, 256, 256)``),
        also the number of rows the writer buffers; ``None`` (the default) stores the arrays
        contiguously (unchunked, which rules out compression) and buffers one row.
    compression
        ``none``, ``lzf`` or ``gzip-<1..9>`` (see :func:`compression_kwargs`); needs chunking.
    segmenter_fingerprint
        :func:`laplace_head.settings.segmenter_fingerprint` of the settings stage 3 made the
        rows with, recorded in the file (None: not recorded).

    Returns
    -------
    dict
        ``split, n_rows, chunks, compression, source_index_md5, bytes``.

    Raises
    ------
    PackingError
        If an array or mask listed in the index cannot be read or has the wrong shape.
    ValueError
        For an invalid ``chunk_rows`` or ``compression`` (or compression without chunking).
    """
    if chunk_rows is not None and int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1 or None (contiguous); got {chunk_rows}")
    create_kwargs = compression_kwargs(compression)
    if chunk_rows is None and create_kwargs:
        raise ValueError(
            f"compression {compression!r} needs chunking; pass chunk_rows >= 1 or use 'none'"
        )
    index_csv, out_h5 = Path(index_csv), Path(out_h5)
    index = read_index(index_csv)
    n_rows = len(index)
    split = _split_name(index, index_csv, split)
    chunks = None if chunk_rows is None else (int(chunk_rows), *ARRAY_SHAPE)
    layout = {} if chunks is None else {"chunks": chunks, "maxshape": (None, *ARRAY_SHAPE)}
    source_md5 = file_md5(index_csv)
    remove_stale_temp_files(out_h5.parent, [out_h5.name])  # a killed earlier attempt's file
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as handle:
        datasets = {}
        for name, dtype in [*((n, np.float16) for n in INPUT_ARRAYS), (MASK_ARRAY, np.uint8)]:
            # maxshape lets a chunk be taller than an empty (N = 0) or short dataset.
            datasets[name] = handle.create_dataset(
                name, shape=(n_rows, *ARRAY_SHAPE), dtype=dtype, **layout, **create_kwargs
            )
        _stream_rows(index, datasets, chunk_rows or 1, progress)
        write_h5_index(handle.create_group("index"), index[INDEX_COLUMNS])
        handle.attrs["format_version"] = FORMAT_VERSION
        handle.attrs["split"] = split
        handle.attrs["n_rows"] = n_rows
        handle.attrs["source_index_md5"] = source_md5
        handle.attrs["chunks"] = "contiguous" if chunks is None else np.array(chunks, np.int64)
        handle.attrs["compression"] = compression
        if segmenter_fingerprint is not None:
            write_segmenter_fingerprint(handle, segmenter_fingerprint)
    size = out_h5.stat().st_size
    logger.info(
        "%s: packed %d rows into %s (%.1f MiB, chunks %s, compression %s)",
        split,
        n_rows,
        out_h5,
        size / 2**20,
        chunks or "contiguous",
        compression,
    )
    return {
        "split": split,
        "n_rows": n_rows,
        "chunks": chunks or "contiguous",
        "compression": compression,
        "source_index_md5": source_md5,
        "bytes": size,
    }


def _stream_rows(
    index: pd.DataFrame, datasets: dict[str, h5py.Dataset], chunk_rows: int, progress: bool
) -> None:
    """Fill the array datasets one chunk of rows at a time (the only buffer held)."""
    buffers = {
        name: np.empty((chunk_rows, *ARRAY_SHAPE), ds.dtype) for name, ds in datasets.items()
    }
    mask_cache: tuple[str, np.ndarray] | None = None  # rows of one sample are adjacent
    start = 0
    columns = [*INPUT_ARRAYS.values(), "mask_path"]
    rows = index[columns].itertuples(index=False, name=None)
    for position, (*array_paths, mask_path) in enumerate(
        tqdm(rows, total=len(index), desc="pack_hdf5", unit="row", disable=not progress)
    ):
        slot = position - start
        for name, path in zip(INPUT_ARRAYS, array_paths):
            buffers[name][slot] = _load_array(path)
        if mask_cache is None or mask_cache[0] != mask_path:
            mask_cache = (mask_path, _load_gt_256(mask_path))
        buffers[MASK_ARRAY][slot] = mask_cache[1]
        if slot + 1 == chunk_rows or position + 1 == len(index):
            for name, dataset in datasets.items():
                dataset[start : position + 1] = buffers[name][: slot + 1]
            start = position + 1
        fault_point("pack_hdf5")


def pack_image_split(
    index_csv: str | os.PathLike,
    base_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    head: HeadVariant | str = HeadVariant.IMAGE,
    progress: bool = True,
) -> dict:
    """Pack an image head's split: the image at the 256 grid once per sample, and external
    links to everything else in the seed head's split (layout: :mod:`laplace_head.cache
    .split_h5`). Atomic: written under a temporary name beside ``out_h5``, then renamed.

    Parameters
    ----------
    index_csv
        The split's stage-4 index, the one ``base_h5`` was packed from.
    base_h5
        The seed head's packed split (:func:`pack_split`), linked to, never copied.
    out_h5
        Destination, e.g. ``training_data/image/<split>.h5``.
    head
        The head variant recorded in the file (one that reads the image).

    Returns
    -------
    dict
        ``split, n_rows, n_images, base_split, source_index_md5, bytes``.

    Raises
    ------
    PackingError
        ``base_h5`` was packed from another index than ``index_csv``, or an image cannot be
        read or has another size than the index records (the size its logits were made at).
    ValueError
        ``head`` is not a head variant that reads the image.
    """
    head = HeadVariant.parse(head, "head")
    if not head.needs_image:
        raise ValueError(f"head {head.value!r} reads no image: pack its split with pack_split")
    index_csv, base_h5, out_h5 = Path(index_csv), Path(base_h5), Path(out_h5)
    index = read_index(index_csv)
    source_md5 = file_md5(index_csv)
    with open_split(base_h5) as base:
        base_attrs = dict(base.attrs)
        n_base_rows = int(base["logits_256"].shape[0])
    if str(base_attrs.get("source_index_md5")) != source_md5 or n_base_rows != len(index):
        raise PackingError(
            f"{base_h5} was packed from another index than {index_csv} (index MD5 "
            f"{base_attrs.get('source_index_md5')} vs {source_md5}); re-run pack_hdf5 for it."
        )
    sample_ids = list(dict.fromkeys(index["sample_id"]))  # first-appearance order
    slot_of = {sample_id: slot for slot, sample_id in enumerate(sample_ids)}
    first_rows = index.drop_duplicates("sample_id")
    relative_base = os.path.relpath(base_h5, out_h5.parent)
    remove_stale_temp_files(out_h5.parent, [out_h5.name])
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as handle:
        for name in LINKED_NAMES:
            handle[name] = h5py.ExternalLink(relative_base, f"/{name}")
        images = handle.create_dataset(
            IMAGE_ARRAY, shape=(len(sample_ids), 3, *ARRAY_SHAPE), dtype=np.uint8
        )
        rows = first_rows[["image_path", "image_h", "image_w"]].itertuples(index=False)
        for slot, (image_path, height, width) in enumerate(
            tqdm(rows, total=len(sample_ids), desc="pack images", disable=not progress)
        ):
            images[slot] = _load_image_256(image_path, int(height), int(width))
            fault_point("pack_hdf5")
        handle.create_dataset(
            IMAGE_ROW, data=index["sample_id"].map(slot_of).to_numpy(dtype=np.int64)
        )
        handle.create_dataset(
            IMAGE_SAMPLE_ID,
            data=np.array(sample_ids, dtype=object),
            dtype=h5py.string_dtype(encoding="utf-8"),
            shape=(len(sample_ids),),
        )
        for key in ("format_version", "split", "n_rows", "source_index_md5"):
            handle.attrs[key] = base_attrs[key]
        if SEGMENTER_FINGERPRINT_ATTR in base_attrs:
            handle.attrs[SEGMENTER_FINGERPRINT_ATTR] = base_attrs[SEGMENTER_FINGERPRINT_ATTR]
        handle.attrs[HEAD_ATTR] = head.value
        handle.attrs["n_images"] = len(sample_ids)
        handle.attrs[BASE_SPLIT_ATTR] = relative_base
    size = out_h5.stat().st_size
    logger.info(
        "%s: %d images for %d rows in %s (%.1f MiB; arrays linked to %s)",
        base_attrs["split"],
        len(sample_ids),
        len(index),
        out_h5,
        size / 2**20,
        relative_base,
    )
    return {
        "split": str(base_attrs["split"]),
        "n_rows": len(index),
        "n_images": len(sample_ids),
        "base_split": relative_base,
        "source_index_md5": source_md5,
        "bytes": size,
    }


def _load_image_256(image_path: str, height: int, width: int) -> np.ndarray:
    try:
        image = load_image_rgb(image_path)
    except ImageReadError as exc:
        raise PackingError(
            f"image {image_path!r}: {exc}. Fix or remove the file and re-run from build_manifests."
        ) from exc
    if image.shape[:2] != (height, width):
        raise PackingError(
            f"image {image_path!r} is {image.shape[0]}x{image.shape[1]} pixels, but its logits "
            f"were made at {height}x{width} (the index); it changed since stage 1. Re-run "
            "from build_manifests."
        )
    return resize_image_grid(image, ARRAY_SHAPE[0])
