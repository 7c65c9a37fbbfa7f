"""Training-data loading throughput: packed HDF5 through the training Dataset vs alternatives.

Builds a fake training split from the real_dev masks (``bench_packing.REAL_DEV``) and its
stage-4 index (``bench_packing.make_fake_index``: ``--samples`` samples x ``--promptsets`` prompt
sets, in a temporary folder), packs it twice with :func:`laplace_head.cache.packing.pack_split` -
with the default layout (contiguous, uncompressed) and with one row per chunk - and measures
samples/s of reading every row once per epoch in shuffled batches of ``--batch-size`` rows,
converted to float32 tensors ``inputs (B, 3, 256, 256)`` (logits clipped to +-20) /
``target (B, 1, 256, 256)``. ``torch.set_num_threads(1)`` and ``num_workers=0``, so only reading
and conversion are measured. Variants:

- ``h5``: :class:`laplace_head.training.dataset.H5SegmentationDataset` with
  ``in_memory="never"`` (reads the HDF5 from disk, one plain read per row and array) through
  :func:`laplace_head.training.dataset.make_loader` (one batch per item, no collate);
- ``ram``: the same Dataset and loader with ``in_memory="always"`` (the same arrays held in
  in-memory numpy arrays, same conversion code);
- ``numpy``: bare numpy fancy indexing of the in-memory arrays plus this script's own
  clip/stack/float32 conversion (``_to_tensors``), no Dataset or DataLoader (a lower bound on
  per-batch overhead);
- ``npy``: what training would do without packing: per row, three ``.npy`` loads plus the
  ground-truth mask read and resized to 256x256 (``load_mask`` + ``resize_mask_nearest``),
  same conversion as ``numpy``;
- ``npy_dataset``: the same per-file reads the way the seed's ``dataset.py`` did them: a
  ``torch`` Dataset over index rows, one file set per ``__getitem__``, a DataLoader with
  ``batch_size`` and the default collate;
- ``h5_chunk1``: the ``h5`` variant on the file packed with ``chunk_rows=1`` (uncompressed)
  instead of the contiguous default; timed in the first epoch only.

The variants run round-robin, one epoch each per round, for ``--epochs`` rounds, so that a
change in machine load hits all of them alike; each reports its best epoch. Printed: the rate of
every variant and the ratios h5 / ram (target >= 0.7), h5 / numpy (no target), h5 / npy and
h5 / npy_dataset (target >= 3 each); the targets are those of issue 3. By default the page cache
is warm (every epoch after the first on a machine with enough RAM); ``--cold`` evicts every file
involved (both HDF5 files, the ``.npy`` files and the masks) from the page cache
(``posix_fadvise(DONTNEED)``) before each epoch, like a first epoch or a dataset larger than RAM.

    .venv/bin/python bench/bench_loading.py [--samples 64] [--promptsets 4] [--batch-size 8]
        [--epochs 5] [--cold]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from bench_packing import make_fake_index

from laplace_head.cache.index import read_index
from laplace_head.cache.packing import pack_split
from laplace_head.dataset.images import load_mask, resize_mask_nearest
from laplace_head.training.dataset import H5SegmentationDataset, make_loader

LOGIT_CLIP = 20.0


def _to_tensors(logits, pos, neg, gt):
    logits = np.clip(logits.astype(np.float32), -LOGIT_CLIP, LOGIT_CLIP)
    inputs = np.stack([logits, pos.astype(np.float32), neg.astype(np.float32)], axis=1)
    return torch.from_numpy(inputs), torch.from_numpy(gt.astype(np.float32)[:, None])


def _batches(n_rows: int, batch_size: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_rows)
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def dataset_epochs(h5: Path, in_memory: str, batch_size: int) -> Callable[[int], int]:
    """One epoch of the training Dataset + loader; returns the samples seen."""
    dataset = H5SegmentationDataset(h5, logit_clip=LOGIT_CLIP, in_memory=in_memory)
    loader, sampler = make_loader(dataset, batch_size, shuffle=True, seed=0, num_workers=0)

    def epoch(number: int) -> int:
        sampler.set_epoch(number)
        return sum(inputs.shape[0] for inputs, _ in loader)

    return epoch


def numpy_epochs(h5: Path, batch_size: int) -> Callable[[int], int]:
    with h5py.File(h5, "r") as handle:
        arrays = [handle[n][()] for n in ("logits_256", "pos_map", "neg_map", "gt_mask_256")]

    def epoch(number: int) -> int:
        seen = 0
        for rows in _batches(len(arrays[0]), batch_size, number):
            inputs, _ = _to_tensors(*(a[rows] for a in arrays))
            seen += inputs.shape[0]
        return seen

    return epoch


def npy_epochs(index_csv: Path, batch_size: int) -> Callable[[int], int]:
    index = read_index(index_csv)

    def epoch(number: int) -> int:
        seen = 0
        for rows in _batches(len(index), batch_size, number):
            parts = [[], [], [], []]
            for row in index.iloc[rows].itertuples():
                parts[0].append(np.load(row.logits_256_path))
                parts[1].append(np.load(row.pos_map_path))
                parts[2].append(np.load(row.neg_map_path))
                parts[3].append(resize_mask_nearest(load_mask(row.mask_path), 256, 256))
            inputs, _ = _to_tensors(*(np.stack(p) for p in parts))
            seen += inputs.shape[0]
        return seen

    return epoch


class _NpyRowDataset(torch.utils.data.Dataset):
    """Per-file loading, one index row per item (the seed's CSV-driven Dataset)."""

    def __init__(self, index_csv: Path) -> None:
        self.rows = list(read_index(index_csv).itertuples())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[position]
        arrays = [
            np.load(p)[None] for p in (row.logits_256_path, row.pos_map_path, row.neg_map_path)
        ]
        gt = resize_mask_nearest(load_mask(row.mask_path), 256, 256)[None]
        inputs, target = _to_tensors(*arrays, gt)
        return inputs[0], target[0]


def npy_dataset_epochs(index_csv: Path, batch_size: int) -> Callable[[int], int]:
    dataset = _NpyRowDataset(index_csv)

    def epoch(number: int) -> int:
        generator = torch.Generator().manual_seed(number)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=generator
        )
        return sum(inputs.shape[0] for inputs, _ in loader)

    return epoch


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop the cached pages of ``paths`` (clean pages only; no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--promptsets", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="evict files before each epoch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_loading_") as tmp:
        index_csv = make_fake_index(Path(tmp), args.samples, args.promptsets)
        h5 = Path(tmp) / "train.h5"
        report = pack_split(index_csv, h5, progress=False)
        chunked = Path(tmp) / "train_chunk1.h5"
        pack_split(index_csv, chunked, chunk_rows=1, progress=False)
        print(
            f"rows={report['n_rows']} batch_size={args.batch_size} chunks={report['chunks']} "
            f"compression={report['compression']} torch threads=1, num_workers=0, "
            f"best of {args.epochs} interleaved epochs, {'cold' if args.cold else 'warm'} cache"
        )
        variants = {
            "h5": dataset_epochs(h5, "never", args.batch_size),
            "ram": dataset_epochs(h5, "always", args.batch_size),
            "numpy": numpy_epochs(h5, args.batch_size),
            "npy": npy_epochs(index_csv, args.batch_size),
            "npy_dataset": npy_dataset_epochs(index_csv, args.batch_size),
            "h5_chunk1": dataset_epochs(chunked, "never", args.batch_size),
        }
        index = read_index(index_csv)
        files = [h5, chunked, *map(Path, sorted(set(index.mask_path)))]
        for column in ("logits_256_path", "pos_map_path", "neg_map_path"):
            files.extend(map(Path, index[column]))
        rates = dict.fromkeys(variants, 0.0)
        # Round-robin so that a change in machine load hits every variant alike.
        for number in range(args.epochs):
            for name, epoch in variants.items():
                if name == "h5_chunk1" and number:
                    continue  # one epoch is enough for the chunked layout's ratio
                if args.cold:
                    evict_from_page_cache(files)
                start = time.perf_counter()
                seen = epoch(number)
                rates[name] = max(rates[name], seen / (time.perf_counter() - start))
    for name, rate in rates.items():
        print(f"{name:>9}: {rate:8.0f} samples/s")
    print(f"h5 / ram   = {rates['h5'] / rates['ram']:.2f}   (target >= 0.7)")
    print(f"h5 / numpy = {rates['h5'] / rates['numpy']:.2f}")
    print(f"h5 / npy   = {rates['h5'] / rates['npy']:.2f}   (target >= 3)")
    print(f"h5 / npy_dataset = {rates['h5'] / rates['npy_dataset']:.2f}   (target >= 3)")


if __name__ == "__main__":
    main()
