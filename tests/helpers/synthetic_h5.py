"""Synthetic split HDF5 files in exactly the packed layout of stage 4.5 (for tests and benches).

The content is learnable by the 5x5-receptive-field head: the ground truth is a union of random
ellipses; the "base segmenter" logits are a blurred copy of it with a small negative offset and
strong per-pixel noise (``logits_256 > 0`` is a speckled, slightly eroded mask: base IoU ~0.6);
the prompt maps are Gaussians at points drawn on foreground (positive) and background
(negative). A local filter that smooths the noise reaches IoU > 0.9 within ~10 full-batch steps
(~0.96 at convergence), so the sanity check passes quickly; with pixel-shuffled targets it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from laplace_head.cache.index import INDEX_COLUMNS
from laplace_head.prompts.sampling import gaussian_prompt_map
from laplace_head.util.atomic import atomic_path

INDEX_STRING_COLUMNS = (
    "sample_id",
    "safe_id",
    "class",
    "split",
    "image_path",
    "mask_path",
    "logits_256_path",
    "pos_map_path",
    "neg_map_path",
    "meta_path",
)
INDEX_INT_COLUMNS = ("promptset_id", "image_h", "image_w", "k_pairs", "branch")
INDEX_FLOAT_COLUMNS = ("score",)


def _random_gt(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) uint8 {0, 1}: union of 1-2 random ellipses, never empty nor full."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, size=2)
        ry, rx = rng.uniform(0.08 * size, 0.25 * size, size=2)
        theta = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return mask.astype(np.uint8)


def _base_logits(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """(size, size) float16 logits: blurred GT, shifted slightly negative, plus strong noise."""
    soft = ndimage.gaussian_filter(gt.astype(np.float64), sigma=3.0)
    logits = 12.0 * (soft - 0.5) - 2.0 + rng.normal(0.0, 4.0, size=gt.shape)
    return logits.astype(np.float16)


def _prompt_maps(
    rng: np.random.Generator, gt: np.ndarray, k: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    flat = gt.ravel().astype(bool)
    width = gt.shape[1]
    maps = []
    for region in (np.flatnonzero(flat), np.flatnonzero(~flat)):
        picks = rng.choice(region, size=k, replace=region.size < k)
        points = np.stack([picks % width, picks // width], axis=1).astype(np.float64)
        maps.append(gaussian_prompt_map(points, sigma, size=gt.shape[0]))
    return maps[0], maps[1]


def make_synthetic_h5(
    path: str | os.PathLike,
    n_rows: int,
    seed: int = 0,
    size: int = 256,
    split: str = "train",
    promptsets_per_sample: int = 2,
    sigma: float = 8.0,
) -> Path:
    """Write a split HDF5 with ``n_rows`` learnable synthetic rows (``n_rows`` may be 0).

    Layout (the stage 4.5 contract): datasets ``logits_256``, ``pos_map``, ``neg_map``
    (N, size, size) float16, ``gt_mask_256`` (N, size, size) uint8 {0, 1}; group ``index/`` with
    one 1-D dataset per index column; attributes format_version, split, n_rows,
    source_index_md5, chunks, compression.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    logits = np.zeros((n_rows, size, size), dtype=np.float16)
    pos = np.zeros_like(logits)
    neg = np.zeros_like(logits)
    gts = np.zeros((n_rows, size, size), dtype=np.uint8)
    columns: dict[str, list] = {name: [] for name in INDEX_COLUMNS}
    gt = None
    for row in range(n_rows):
        sample, promptset_id = divmod(row, promptsets_per_sample)
        if promptset_id == 0:
            gt = _random_gt(rng, size)
        k = int(rng.integers(1, 6))
        gts[row] = gt
        logits[row] = _base_logits(rng, gt)
        pos[row], neg[row] = _prompt_maps(rng, gt, k, sigma)
        stem = f"img{sample:04d}"
        folder = f"/synthetic/sam_precompute/{split}/synth__{stem}/promptset_{promptset_id:04d}"
        columns["sample_id"].append(f"synth/{stem}")
        columns["safe_id"].append(f"synth__{stem}")
        columns["class"].append("synth")
        columns["split"].append(split)
        columns["promptset_id"].append(promptset_id)
        columns["image_path"].append(f"/synthetic/images/synth/{stem}.png")
        columns["image_h"].append(size)
        columns["image_w"].append(size)
        columns["mask_path"].append(f"/synthetic/masks/synth/{stem}.npy")
        columns["logits_256_path"].append(f"{folder}/logits_256.npy")
        columns["pos_map_path"].append(f"{folder}/pos_map.npy")
        columns["neg_map_path"].append(f"{folder}/neg_map.npy")
        columns["meta_path"].append(f"{folder}/meta.json")
        columns["k_pairs"].append(k)
        columns["branch"].append(0)
        columns["score"].append(float(rng.uniform(0.5, 1.0)))

    chunks = (1, size, size) if n_rows else None
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, array in (
            ("logits_256", logits),
            ("pos_map", pos),
            ("neg_map", neg),
            ("gt_mask_256", gts),
        ):
            handle.create_dataset(name, data=array, chunks=chunks)
        index = handle.create_group("index")
        string_dtype = h5py.string_dtype(encoding="utf-8")
        for name in INDEX_COLUMNS:
            if name in INDEX_STRING_COLUMNS:
                index.create_dataset(
                    name, data=np.array(columns[name], dtype=object), dtype=string_dtype
                )
            elif name in INDEX_INT_COLUMNS:
                index.create_dataset(name, data=np.array(columns[name], dtype=np.int64))
            else:
                index.create_dataset(name, data=np.array(columns[name], dtype=np.float64))
        index.attrs["columns"] = list(INDEX_COLUMNS)
        handle.attrs["format_version"] = 1
        handle.attrs["split"] = split
        handle.attrs["n_rows"] = n_rows
        handle.attrs["source_index_md5"] = "synthetic"
        handle.attrs["chunks"] = list(chunks) if chunks else [0, size, size]
        handle.attrs["compression"] = "none"
    return path


def make_synthetic_image_h5(base_h5: str | os.PathLike, out_h5: str | os.PathLike, seed: int = 0):
    """An image head's split over ``base_h5`` (:func:`make_synthetic_h5`), in the packed layout
    of :func:`laplace_head.cache.packing.pack_image_split`: one (3, size, size) uint8 image per
    sample (the sample's ground truth, bright on dark, plus noise: informative for the head),
    ``image_row`` per row, external links to the base file for everything else."""
    from laplace_head.cache.split_h5 import (
        BASE_SPLIT_ATTR,
        HEAD_ATTR,
        IMAGE_ARRAY,
        IMAGE_ROW,
        IMAGE_SAMPLE_ID,
        LINKED_NAMES,
    )

    base_h5, out_h5 = Path(base_h5), Path(out_h5)
    rng = np.random.default_rng(seed)
    with h5py.File(base_h5, "r") as base:
        attrs = dict(base.attrs)
        sample_ids = [str(s) for s in base["index"]["sample_id"].asstr()[()]]
        gts = base["gt_mask_256"][()]
    unique = list(dict.fromkeys(sample_ids))
    rows = np.array([unique.index(s) for s in sample_ids], dtype=np.int64)
    first = [sample_ids.index(s) for s in unique]
    images = np.empty((len(unique), 3, *gts.shape[1:]), dtype=np.uint8)
    for slot, row in enumerate(first):
        colour = 40.0 + 160.0 * gts[row][None] + rng.normal(0.0, 20.0, (3, *gts.shape[1:]))
        images[slot] = np.clip(colour, 0, 255).astype(np.uint8)
    relative = os.path.relpath(base_h5, out_h5.parent)
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as handle:
        for name in LINKED_NAMES:
            handle[name] = h5py.ExternalLink(relative, f"/{name}")
        handle.create_dataset(IMAGE_ARRAY, data=images)
        handle.create_dataset(IMAGE_ROW, data=rows)
        handle.create_dataset(
            IMAGE_SAMPLE_ID,
            data=np.array(unique, dtype=object),
            dtype=h5py.string_dtype(encoding="utf-8"),
        )
        for key in ("format_version", "split", "n_rows", "source_index_md5"):
            handle.attrs[key] = attrs[key]
        handle.attrs[HEAD_ATTR] = "image"
        handle.attrs["n_images"] = len(unique)
        handle.attrs[BASE_SPLIT_ATTR] = relative
    return out_h5
