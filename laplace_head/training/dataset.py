"""PyTorch Dataset over one split's packed HDF5 (stage 4.5 output).

Reading strategy, chosen so that data loading is never the training bottleneck:

* **Lazy, per-process handles.** The file is opened on first access in each process (main or
  DataLoader worker) and the handle is dropped when the dataset is pickled, so forked or spawned
  workers never share an HDF5 handle (h5py handles are not fork-safe).
* **Batched reads.** :func:`make_loader` hands each worker a whole batch of row indices
  (:meth:`H5SegmentationDataset.get_batch`), so nothing is collated sample by sample; rows are
  read one plain slice each (h5py's fancy indexing is far slower on chunked datasets).
* **In-RAM mode.** ``in_memory="always"`` copies the four arrays into memory at construction
  (float16/uint8, 7 bytes per pixel, ~0.46 MB per row); ``"auto"`` does so when that footprint is
  below a quarter of the memory currently available; ``"never"`` always reads from disk.
  With forked workers the copy is shared copy-on-write.

Items are ``(inputs, target)``: inputs (3, 256, 256) float32 = [logits_256 clipped to
±logit_clip, pos_map, neg_map] (an image head's split: (6, 256, 256), the image's normalised
RGB after them, :func:`~laplace_head.cache.split_h5.assemble_inputs`); target (1, 256, 256)
float32 in {0, 1}.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from laplace_head.cache.split_h5 import (
    ARRAY_NAMES,
    BYTES_PER_PIXEL,
    IMAGE_ARRAY,
    IMAGE_ROW,
    MASK_ARRAY,
    assemble_inputs,
    open_split,
    read_row_images,
    split_fingerprint,
    split_head,
)
from laplace_head.util.seeding import derive_seed

LOGGER = logging.getLogger(__name__)
IN_MEMORY_MODES = ("auto", "always", "never")


def available_memory_bytes() -> int | None:
    """Memory currently available to new allocations (psutil, else ``os.sysconf``), or None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def should_load_in_memory(mode: str, footprint_bytes: int) -> bool:
    """Resolve ``in_memory`` (auto | always | never) for a split needing ``footprint_bytes``."""
    if mode not in IN_MEMORY_MODES:
        raise ValueError(f"in_memory must be one of {', '.join(IN_MEMORY_MODES)}; got {mode!r}")
    if mode != "auto":
        return mode == "always"
    available = available_memory_bytes()
    return available is not None and footprint_bytes < available / 4


class H5SegmentationDataset(Dataset):
    """Rows of a split HDF5 as (inputs (3, 256, 256) float32, target (1, 256, 256) float32).

    Parameters
    ----------
    h5_path
        the layout's ``split_h5(split)``.
    logit_clip
        Input logits are clipped to ``[-logit_clip, logit_clip]`` (they are unclipped on disk).
    in_memory
        ``auto`` | ``always`` | ``never`` (see the module docstring).

    Raises
    ------
    DataFileError
        When the file is missing, unreadable, or lacks a dataset of the packed layout.
    """

    def __init__(
        self, h5_path: str | os.PathLike, logit_clip: float = 20.0, in_memory: str = "auto"
    ) -> None:
        if logit_clip <= 0:
            raise ValueError(f"logit_clip must be > 0; got {logit_clip}")
        self.h5_path = Path(h5_path)
        self.logit_clip = float(logit_clip)
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None
        self._arrays: dict[str, np.ndarray] | None = None
        self._images: np.ndarray | None = None
        with open_split(self.h5_path) as handle:
            shape = handle["logits_256"].shape
            self.n_rows = int(shape[0])
            self.map_shape = tuple(int(s) for s in shape[1:])
            self.fingerprint = split_fingerprint(handle)
            self.head = split_head(handle)
            footprint = self.n_rows * int(np.prod(self.map_shape)) * BYTES_PER_PIXEL
            if self.head.needs_image:
                footprint += int(np.prod(handle[IMAGE_ARRAY].shape))
            self.in_memory = should_load_in_memory(in_memory, footprint)
            if self.in_memory:
                self._arrays = {name: handle[name][:] for name in ARRAY_NAMES}
                if self.head.needs_image:
                    self._images = handle[IMAGE_ARRAY][:]
                    self._image_row = handle[IMAGE_ROW][:]
        LOGGER.info(
            "%s: %d rows, %s",
            self.h5_path.name,
            self.n_rows,
            "loaded into RAM" if self.in_memory else "read lazily from disk",
        )

    def __len__(self) -> int:
        return self.n_rows

    def __getstate__(self) -> dict:
        # An open h5py handle must never cross a process boundary; each worker reopens.
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def _file(self) -> h5py.File:
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = h5py.File(self.h5_path, "r")
            self._handle_pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's HDF5 handle (reopened on the next access)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def _read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays for ``rows`` (1-D int array, any order, repeats allowed) in that order."""
        if self._arrays is not None:
            arrays = {name: array[rows] for name, array in self._arrays.items()}
            if self._images is not None:
                arrays[IMAGE_ARRAY] = self._images[self._image_row[rows]]
            return arrays
        # One plain read per row: h5py's fancy (list) indexing is ~100x slower on chunked
        # datasets (34 ms vs 0.2 ms for 8 rows of (1, 256, 256) chunks, measured).
        handle = self._file()
        arrays = {}
        for name in ARRAY_NAMES:
            dataset = handle[name]
            out = np.empty((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
            for position, row in enumerate(rows):
                out[position] = dataset[int(row)]
            arrays[name] = out
        if self.head.needs_image:
            arrays[IMAGE_ARRAY] = read_row_images(handle, rows)
        return arrays

    def _to_tensors(self, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        # Cast float16 -> float32 straight into the output buffer (one pass, no temporaries).
        inputs = assemble_inputs(
            arrays["logits_256"],
            arrays["pos_map"],
            arrays["neg_map"],
            self.logit_clip,
            arrays.get(IMAGE_ARRAY),
        )
        target = arrays[MASK_ARRAY][:, None].astype(np.float32)
        return torch.from_numpy(inputs), torch.from_numpy(target)

    def get_batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A stacked batch: inputs (B, C, 256, 256) float32 (C = 3, or 6 for an image split),
        target (B, 1, 256, 256) float32."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -self.n_rows or rows.max() >= self.n_rows):
            raise IndexError(f"row index out of range for {self.n_rows} rows")
        return self._to_tensors(self._read(rows % max(self.n_rows, 1)))

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = self.get_batch([row])
        return inputs[0], target[0]

    def __getitems__(self, rows: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # The DataLoader's default collate stacks these back into (B, ...) tensors.
        inputs, target = self.get_batch(rows)
        return list(zip(inputs, target))


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of row indices whose order depends only on ``(seed, epoch)``.

    Shuffling derives a fresh generator from ``derive_seed(seed, "batch_order", epoch)`` each
    epoch instead of advancing one global generator, so a run resumed at epoch ``e`` sees exactly
    the batches an uninterrupted run sees. Call :meth:`set_epoch` before iterating.
    """

    def __init__(self, n_rows: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """Row order of the current epoch."""
        if not self.shuffle:
            return list(range(self.n_rows))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "batch_order", self.epoch))
        return torch.randperm(self.n_rows, generator=generator).tolist()

    def __iter__(self):
        order = self.order()
        for start in range(0, self.n_rows, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-self.n_rows // self.batch_size)


class _BatchView(Dataset):
    """Index = a list of rows, item = a stacked batch (one HDF5 read per array per batch)."""

    def __init__(self, dataset: H5SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.get_batch(rows)


def make_loader(
    dataset: H5SegmentationDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, EpochBatchSampler]:
    """A DataLoader yielding (inputs (B, 3, 256, 256), target (B, 1, 256, 256)) float32 batches.

    Each batch is read in one go by a worker (``batch_size=None`` + a sampler of row lists), so
    nothing is collated sample by sample. Workers persist across epochs and keep their HDF5
    handle open. Returns the loader and its sampler (call ``sampler.set_epoch(e)`` each epoch).
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed)
    loader = DataLoader(
        _BatchView(dataset),
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return loader, sampler
