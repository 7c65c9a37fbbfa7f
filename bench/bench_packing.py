"""Choose the HDF5 chunking and compression of stage 4.5 by measurement.

Builds a fake split in the stage-3 layout (float16 ``.npy`` files + ``meta.json``) from the
real ground-truth masks in ``real_dev`` (logits: a smooth signed field around the mask, like
SAM's upsampled low-resolution logits or the random walker's clipped probabilities; prompt maps:
Gaussians at points on foreground/background), indexes it with stage 4, then packs it with every
(chunk_rows, compression) pair and measures:

- write time of :func:`laplace_head.cache.packing.pack_split` (includes reading the ``.npy`` files,
  the same for every setting),
- file size,
- random-access reads, rows in shuffled order, samples/s: ``row`` reads one row of all four
  datasets at a time; ``batch`` reads the sorted rows of a batch of 8 with one fancy-index
  read per dataset (what ``laplace_head.training.dataset`` does),
- a full in-memory load (``dataset[()]`` of all four datasets), seconds.

Reads run on a warm page cache (the file was just written), like every epoch after the first.

    .venv/bin/python bench/bench_packing.py [--samples 64] [--promptsets 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from laplace_head.cache.index import write_training_index
from laplace_head.cache.packing import pack_split
from laplace_head.cache.promptset_format import ARRAY_FILES, META_FILE, promptset_dir
from laplace_head.cache.split_h5 import INPUT_ARRAYS, MASK_ARRAY
from laplace_head.dataset.images import load_mask, resize_mask_nearest
from laplace_head.layout import ProjectLayout
from laplace_head.prompts.sampling import gaussian_prompt_map
from laplace_head.util.atomic import atomic_save_npy, atomic_write_csv, atomic_write_json

REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_dev"
SETTINGS = [(None, "none")] + [
    (rows, compression) for rows in (1, 8, 32) for compression in ("none", "lzf", "gzip-1")
]
BATCH_SIZE = 8


def _smooth_logits(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    soft = ndimage.gaussian_filter(gt.astype(np.float64), sigma=4.0)
    drift = ndimage.gaussian_filter(rng.normal(0.0, 1.0, gt.shape), sigma=16.0) * 40.0
    return np.clip(16.0 * (soft - 0.5) + drift, -20.0, 20.0).astype(np.float16)


def _points(rng: np.random.Generator, region: np.ndarray, k: int) -> np.ndarray:
    flat = np.flatnonzero(region)
    picks = rng.choice(flat, size=k, replace=flat.size < k)
    return np.stack([picks % region.shape[1], picks // region.shape[1]], axis=1)


def make_fake_split(
    root: Path,
    n_samples: int,
    promptsets: int,
    seed: int = 0,
    split: str = "train",
    real_dev: Path = REAL_DEV,
) -> tuple[Path, Path]:
    """Write a split manifest and its stage-3 folders under ``root`` from real masks.

    Returns
    -------
    tuple
        (split CSV path, precompute split dir).
    """
    rng = np.random.default_rng(seed)
    mask_paths = sorted((real_dev / "masks_root").glob("*/*.npy"))
    records = []
    precompute = ProjectLayout(root).precompute_dir(split)
    for i in range(n_samples):
        mask_path = mask_paths[i % len(mask_paths)]
        cls, stem = mask_path.parent.name, f"{mask_path.stem}_{i:05d}"
        mask = load_mask(mask_path)
        gt = resize_mask_nearest(mask, 256, 256)
        safe_id = f"{cls}__{stem}"
        image = next((real_dev / "images_root" / cls).glob(f"{mask_path.stem}.*"))
        records.append(
            {
                "sample_id": f"{cls}/{stem}",
                "safe_id": safe_id,
                "class": cls,
                "stem": stem,
                "image_path": str(image),
                "mask_path": str(mask_path),
                "image_h": mask.shape[0],
                "image_w": mask.shape[1],
                "split": split,
            }
        )
        for promptset_id in range(promptsets):
            k = int(rng.integers(1, 11))
            pos, neg = _points(rng, gt, k), _points(rng, ~gt, k)
            folder = promptset_dir(precompute, safe_id, promptset_id)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_save_npy(folder / ARRAY_FILES["logits_256"], _smooth_logits(rng, gt))
            atomic_save_npy(folder / ARRAY_FILES["pos_map"], gaussian_prompt_map(pos, 8.0))
            atomic_save_npy(folder / ARRAY_FILES["neg_map"], gaussian_prompt_map(neg, 8.0))
            meta = {
                "k": k,
                "branch_index": (branch := int(rng.integers(0, 3))),
                "scores": (scores := rng.uniform(0.5, 1.0, 3).round(4).tolist()),
                "score": scores[branch],
                "pos_points_256": pos.tolist(),
                "neg_points_256": neg.tolist(),
            }
            atomic_write_json(folder / META_FILE, meta)
    split_csv = ProjectLayout(root).manifest(split)
    atomic_write_csv(split_csv, pd.DataFrame(records).sort_values("sample_id"))
    return split_csv, precompute


def make_fake_index(root: Path, n_samples: int, promptsets: int, seed: int = 0) -> Path:
    """A fake split plus its stage-4 index; returns the index CSV path."""
    split_csv, precompute = make_fake_split(root, n_samples, promptsets, seed)
    layout = ProjectLayout(root)
    index_csv = layout.training_index("train")
    write_training_index(
        "train", split_csv, precompute, [], index_csv, layout.training_failures("train")
    )
    return index_csv


def _random_read(path: Path, order: np.ndarray) -> float:
    names = [*INPUT_ARRAYS, MASK_ARRAY]
    with h5py.File(path, "r") as handle:
        datasets = [handle[name] for name in names]
        start = time.perf_counter()
        for row in order:
            for dataset in datasets:
                dataset[row]
        return time.perf_counter() - start


def _batch_read(path: Path, order: np.ndarray) -> float:
    names = [*INPUT_ARRAYS, MASK_ARRAY]
    batches = [np.sort(order[i : i + BATCH_SIZE]) for i in range(0, len(order), BATCH_SIZE)]
    with h5py.File(path, "r") as handle:
        datasets = [handle[name] for name in names]
        start = time.perf_counter()
        for rows in batches:
            for dataset in datasets:
                dataset[rows]
        return time.perf_counter() - start


def _full_load(path: Path) -> float:
    start = time.perf_counter()
    with h5py.File(path, "r") as handle:
        for name in [*INPUT_ARRAYS, MASK_ARRAY]:
            handle[name][()]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--promptsets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        root = Path(tmp)
        index_csv = make_fake_index(root, args.samples, args.promptsets)
        n_rows = args.samples * args.promptsets
        order = np.random.default_rng(1).permutation(n_rows)
        raw_mib = n_rows * 256 * 256 * (3 * 2 + 1) / 2**20
        print(f"rows={n_rows}  raw array data {raw_mib:.1f} MiB  (python {sys.version.split()[0]})")
        header = f"{'chunk_rows':>10} {'compression':>11} {'write_s':>8} {'MiB':>7} "
        header += f"{'ratio':>6} {'row/s':>7} {'batch/s':>7} {'full_load_s':>11}"
        print(header)
        results = []
        for chunk_rows, compression in SETTINGS:
            out = root / f"train_{chunk_rows}_{compression}.h5"
            start = time.perf_counter()
            pack_split(
                index_csv, out, chunk_rows=chunk_rows, compression=compression, progress=False
            )
            write_s = time.perf_counter() - start
            _random_read(out, order[:32])  # warm-up
            row_rate = n_rows / min(_random_read(out, order) for _ in range(args.repeats))
            batch_rate = n_rows / min(_batch_read(out, order) for _ in range(args.repeats))
            load_s = min(_full_load(out) for _ in range(args.repeats))
            mib = out.stat().st_size / 2**20
            results.append((chunk_rows, compression, row_rate, batch_rate))
            label = "contig" if chunk_rows is None else str(chunk_rows)
            print(
                f"{label:>10} {compression:>11} {write_s:>8.2f} {mib:>7.1f} "
                f"{raw_mib / mib:>6.2f} {row_rate:>7.0f} {batch_rate:>7.0f} {load_s:>11.3f}"
            )
            out.unlink()
        best = max(results, key=lambda r: min(r[2], r[3]))
        print(f"fastest for both read patterns: chunk_rows={best[0]} compression={best[1]}")


if __name__ == "__main__":
    main()
