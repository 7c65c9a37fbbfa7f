"""Sanity panels: look at a few packed training rows before training on them.

Each PNG has six panels: the image (positive points as green ``+``, negative as red ``x``),
the ground-truth mask at 256x256, the SAM mask (``logits_256 > 0``, with its IoU against the
ground truth), the SAM logits (diverging colour map, white at 0, symmetric range as wide as the
data up to +-20), the positive and the negative prompt map (points overlaid). Files are named
``<split>__<safe_id>__promptset_NNNN.png``.

The rows are chosen deterministically from ``(seed, split)``: first one random prompt set of
each of ``n`` distinct samples (so the panels cover as many images as possible), then more
prompt sets when the split has fewer than ``n`` samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

# A bare Figure renders with the Agg canvas and never touches pyplot's global backend/state.
from matplotlib.figure import Figure

from laplace_head.cache.index import read_index
from laplace_head.cache.split_h5 import read_h5_index
from laplace_head.dataset.images import (
    ImageReadError,
    load_image_rgb,
    load_mask,
    resize_mask_nearest,
)
from laplace_head.prompts.sampling import rescale_points
from laplace_head.settings import GRID_SIZE
from laplace_head.util.atomic import atomic_path, atomic_write_json, load_npy_safe, read_json
from laplace_head.util.seeding import derive_seed

logger = logging.getLogger(__name__)

LOGIT_RANGE = 20.0
PANEL_TITLES = ("image", "GT mask", "SAM mask (logits > 0)", "SAM logits", "pos map", "neg map")


def panel_name(split: str, safe_id: str, promptset_id: int) -> str:
    """``<split>__<safe_id>__promptset_NNNN.png``."""
    return f"{split}__{safe_id}__promptset_{int(promptset_id):04d}.png"


def choose_rows(index: pd.DataFrame, n: int, seed: int, split: str) -> list[int]:
    """Up to ``n`` row positions of ``index``, sorted, depending only on (index, n, seed, split).

    One random prompt set per sample for ``n`` random distinct samples; if the split has fewer
    samples than ``n``, further random rows fill up to ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    rng = np.random.default_rng(derive_seed(seed, "sanity_panels", split))
    samples = sorted(set(index["sample_id"]))
    chosen: list[int] = []
    for sample_id in [samples[i] for i in rng.permutation(len(samples))][:n]:
        positions = np.flatnonzero(index["sample_id"].to_numpy() == sample_id)
        chosen.append(int(positions[rng.integers(len(positions))]))
    rest = [i for i in rng.permutation(len(index)) if i not in set(chosen)]
    chosen.extend(int(i) for i in rest[: max(n - len(chosen), 0)])
    return sorted(chosen)


def _points(meta: Mapping[str, Any], key: str) -> np.ndarray:
    """(k, 2) (x, y) points stored under ``key`` in a meta.json (empty if absent)."""
    value = meta.get(key)
    try:
        return np.asarray(value, dtype=np.float64).reshape(-1, 2) if value else np.zeros((0, 2))
    except (TypeError, ValueError):
        return np.zeros((0, 2))


def prompt_points(meta_path: str | os.PathLike, image_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Prompt points of one prompt set, for the overlays.

    Returns ``pos``/``neg`` in original-image pixels and ``pos_256``/``neg_256`` on the 256 grid,
    each (k, 2) (x, y); empty arrays when ``meta.json`` is missing or has no points. Points on
    the 256 grid are taken from the meta when present, else rescaled from the original ones.
    """
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        meta = {}
    points = {}
    for sign in ("pos", "neg"):
        original = _points(meta, f"{sign}_points")
        rescaled = _points(meta, f"{sign}_points_256")
        if not len(rescaled) and len(original):
            rescaled = rescale_points(original, image_hw, GRID_SIZE)
        points[sign], points[f"{sign}_256"] = original, rescaled
    return points


def _arrays_from_h5(handle: h5py.File, position: int) -> dict[str, np.ndarray]:
    return {
        name: handle[name][position] for name in ("logits_256", "pos_map", "neg_map", "gt_mask_256")
    }


def _arrays_from_files(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {
        name: load_npy_safe(row[f"{name}_path"]) for name in ("logits_256", "pos_map", "neg_map")
    }
    gt = resize_mask_nearest(load_mask(row["mask_path"]), GRID_SIZE, GRID_SIZE)
    arrays["gt_mask_256"] = gt.astype(np.uint8)
    return arrays


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _overlay(axis, points: np.ndarray, marker: str, color: str) -> None:
    if len(points):
        limits = axis.get_xlim(), axis.get_ylim()  # keep the image extent (no autoscale)
        axis.scatter(points[:, 0], points[:, 1], marker=marker, c=color, s=60, linewidths=2)
        axis.set_xlim(limits[0])
        axis.set_ylim(limits[1])


def render_panel(
    row: Mapping[str, Any], arrays: Mapping[str, np.ndarray], out_png: str | os.PathLike
) -> Path:
    """Draw the six panels of one index row (arrays: the four (256, 256) maps) to ``out_png``."""
    image_hw = (int(row["image_h"]), int(row["image_w"]))
    points = prompt_points(row["meta_path"], image_hw)
    logits = arrays["logits_256"].astype(np.float32)
    sam_mask = logits > 0
    gt = arrays["gt_mask_256"].astype(bool)
    figure = Figure(figsize=(13, 8.5))
    axes = figure.subplots(2, 3).ravel()
    try:
        axes[0].imshow(load_image_rgb(row["image_path"]))
        _overlay(axes[0], points["pos"], "+", "lime")
        _overlay(axes[0], points["neg"], "x", "red")
    except ImageReadError as exc:
        logger.warning("%s: image not shown (%s)", row["sample_id"], exc)
        axes[0].text(0.5, 0.5, f"image unreadable:\n{exc}", ha="center", va="center", wrap=True)
    axes[1].imshow(gt, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(sam_mask, cmap="gray", vmin=0, vmax=1)
    # Symmetric range around 0 (white = decision boundary), as wide as the data up to the clip.
    finite = np.abs(logits[np.isfinite(logits)])
    limit = float(np.clip(finite.max() if finite.size else 1.0, 1.0, LOGIT_RANGE))
    image = axes[3].imshow(logits, cmap="RdBu_r", vmin=-limit, vmax=limit)
    figure.colorbar(image, ax=axes[3], fraction=0.046, pad=0.04)
    for axis, name, sign, marker, color in (
        (axes[4], "pos_map", "pos", "+", "lime"),
        (axes[5], "neg_map", "neg", "x", "red"),
    ):
        axis.imshow(arrays[name].astype(np.float32), cmap="magma", vmin=0, vmax=1)
        _overlay(axis, points[f"{sign}_256"], marker, color)
    titles = list(PANEL_TITLES)
    titles[2] += f"\nIoU vs GT {_iou(sam_mask, gt):.3f}"
    titles[3] += f"\nrange [{logits.min():.1f}, {logits.max():.1f}]"
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"{row['split']} | {row['sample_id']} | prompt set {int(row['promptset_id'])} | "
        f"k={int(row['k_pairs'])} | branch {int(row['branch'])} score {float(row['score']):.3f}",
        fontsize=11,
    )
    figure.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    return out_png


def write_sanity_panels(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    n: int = 8,
    seed: int = 0,
    split: str | None = None,
    listing_json: str | os.PathLike | None = None,
) -> list[Path]:
    """Write 6-panel PNGs for ``n`` deterministically chosen rows of one split.

    Parameters
    ----------
    source
        The packed split (``<split>.h5``, arrays read from it) or its index CSV
        (``<split>_index.csv``, arrays read from the ``.npy`` files and the mask file).
    out_dir
        Folder of the PNGs (``reports/debug_panels/``). Earlier panels of the same split that
        are not part of this selection are removed, so the folder always shows one selection.
    n, seed
        How many panels; the seed of the choice (see :func:`choose_rows`).
    split
        Name used in file names; defaults to the source's ``split`` attribute/column.
    listing_json
        Optional JSON file listing the written PNGs (the Snakemake output of the rule).

    Returns
    -------
    list of pathlib.Path
        The PNGs written, in index order (empty for an empty split).
    """
    source, out_dir = Path(source), Path(out_dir)
    is_h5 = source.suffix.lower() in (".h5", ".hdf5")
    index = read_h5_index(source) if is_h5 else read_index(source)
    split = split or _split_of(source, index, is_h5)
    rows = choose_rows(index, n, seed, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    handle = h5py.File(source, "r") if is_h5 else None
    try:
        for position in rows:
            row = index.iloc[position].to_dict()
            arrays = _arrays_from_h5(handle, position) if handle else _arrays_from_files(row)
            png = out_dir / panel_name(split, row["safe_id"], row["promptset_id"])
            written.append(render_panel(row, arrays, png))
    finally:
        if handle is not None:
            handle.close()
    _remove_stale(out_dir, split, written)
    if not written:
        logger.warning("%s: no rows in %s, no sanity panels written", split, source)
    logger.info("%s: wrote %d sanity panels to %s", split, len(written), out_dir)
    if listing_json is not None:
        atomic_write_json(
            listing_json,
            {
                "split": split,
                "source": str(source),
                "n": n,
                "seed": seed,
                "panels": [str(p) for p in written],
            },
        )
    return written


def _split_of(source: Path, index: pd.DataFrame, is_h5: bool) -> str:
    if is_h5:
        with h5py.File(source, "r") as handle:
            if "split" in handle.attrs:
                return str(handle.attrs["split"])
    if len(index):
        return str(index["split"].iloc[0])
    return source.name.split(".")[0].removesuffix("_index")


def _remove_stale(out_dir: Path, split: str, keep: Sequence[Path]) -> None:
    keep_names = {p.name for p in keep}
    for png in out_dir.glob(f"{split}__*__promptset_[0-9][0-9][0-9][0-9]*.png"):
        if png.name not in keep_names:
            png.unlink()


def write_overview(panel_paths: Sequence[str | os.PathLike], out_png: str | os.PathLike) -> Path:
    """Stack the first four sanity panels vertically into one PNG (for the HTML report)."""
    from PIL import Image

    if not panel_paths:
        raise ValueError("no sanity panels to put in the overview")
    images = [Image.open(path).convert("RGB") for path in list(panel_paths)[:4]]
    width = max(image.width for image in images)
    overview = Image.new("RGB", (width, sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        overview.paste(image, (0, top))
        top += image.height
    with atomic_path(out_png) as tmp:
        overview.save(tmp, format="PNG")
    return Path(out_png)
