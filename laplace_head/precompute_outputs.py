"""On-disk layout of stage 3's outputs: paths, completeness check, writer and reader.

``sam_precompute/<split>/<safe_id>/promptset_NNNN/`` holds ``logits_256.npy`` ((256, 256)
float16 base-segmenter logits), ``pos_map.npy`` / ``neg_map.npy`` ((256, 256) float16 Gaussian
prompt maps) and ``meta.json`` (written last: its presence marks completion). Stage 3 writes them
(:func:`write_promptset`), stage 4 and the sanity panels read them
(:func:`read_promptset_outputs`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from laplace_head.faults import remove_stale_temp_files
from laplace_head.io import atomic_save_npy, atomic_write_json, read_json
from laplace_head.prompts import MAP_SIZE, PromptSet, gaussian_prompt_map, rescale_points
from laplace_head.segmenters import Prediction

META_FORMAT_VERSION = 1
PROMPTSET_DIR_FORMAT = "promptset_{:04d}"
ARRAY_FILES = ("logits_256.npy", "pos_map.npy", "neg_map.npy")
META_FILE = "meta.json"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def promptset_dir(out_split_dir: str | os.PathLike, safe_id: str, promptset_id: int) -> Path:
    """``<out_split_dir>/<safe_id>/promptset_NNNN``."""
    return Path(out_split_dir) / safe_id / PROMPTSET_DIR_FORMAT.format(int(promptset_id))


def shard_summary_path(project_root: str | os.PathLike, split: str, shard: str | int) -> Path:
    """``<project_root>/sam_precompute/<split>/_shards/shard_NNNN.json``."""
    return Path(project_root, "sam_precompute", split, "_shards", f"shard_{int(shard):04d}.json")


def read_promptset_outputs(directory: str | os.PathLike) -> dict[str, Any]:
    """Load a finished prompt set: ``logits_256``, ``pos_map``, ``neg_map`` ((256, 256) float16)
    and ``meta`` (dict)."""
    directory = Path(directory)
    out: dict[str, Any] = {
        name[: -len(".npy")]: np.load(directory / name, allow_pickle=False) for name in ARRAY_FILES
    }
    out["meta"] = read_json(directory / META_FILE)
    return out


def _points_json(points: np.ndarray) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in np.asarray(points).reshape(-1, 2)]


def is_promptset_complete(
    directory: Path, promptset: PromptSet, sigma: float, fingerprint: str
) -> bool:
    """All four files exist and load (arrays memory-mapped: header and size checked) and the
    meta matches the prompts, ``sigma`` and the segmenter."""
    try:
        meta = read_json(directory / META_FILE)
        for name in ARRAY_FILES:
            array = np.load(directory / name, mmap_mode="r", allow_pickle=False)
            if array.shape != (MAP_SIZE, MAP_SIZE) or array.dtype != np.float16:
                return False
        return (
            meta.get("format_version") == META_FORMAT_VERSION
            and meta.get("segmenter_fingerprint") == fingerprint
            and float(meta.get("sigma", -1.0)) == float(sigma)
            and meta.get("pos_points") == [list(p) for p in promptset.pos_points]
            and meta.get("neg_points") == [list(p) for p in promptset.neg_points]
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def write_promptset(
    directory: Path,
    record: Mapping[str, Any],
    promptset: PromptSet,
    prediction: Prediction,
    sigma: float,
    segmenter_info: Mapping[str, Any],
) -> None:
    """Write one prompt set's three arrays, then its ``meta.json`` (all atomically).

    ``prediction`` is the segmenter's ``((256, 256) float32 logits, branch_index, scores)``;
    the prompt maps are built from ``promptset``'s points rescaled to the 256 grid.

    Raises
    ------
    ValueError
        If the logits are not a finite (256, 256) array (nothing is written then).
    """
    remove_stale_temp_files(directory)  # an interrupted earlier attempt's debris
    logits, branch_index, scores = prediction
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape != (MAP_SIZE, MAP_SIZE) or not np.isfinite(logits).all():
        raise ValueError(f"segmenter returned non-finite or mis-shaped logits {logits.shape}")
    image_hw = (int(record["image_h"]), int(record["image_w"]))
    pos_256 = rescale_points(np.asarray(promptset.pos_points), image_hw, MAP_SIZE)
    neg_256 = rescale_points(np.asarray(promptset.neg_points), image_hw, MAP_SIZE)
    # float16 overflows to inf beyond +-65504; real logits never get there, but never write inf.
    atomic_save_npy(
        directory / "logits_256.npy",
        np.clip(logits, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16),
    )
    atomic_save_npy(directory / "pos_map.npy", gaussian_prompt_map(pos_256, sigma, MAP_SIZE))
    atomic_save_npy(directory / "neg_map.npy", gaussian_prompt_map(neg_256, sigma, MAP_SIZE))
    meta = {
        "format_version": META_FORMAT_VERSION,
        "sample_id": record["sample_id"],
        "safe_id": record["safe_id"],
        "promptset_id": promptset.promptset_id,
        "k": promptset.k,
        "pos_points": [list(p) for p in promptset.pos_points],
        "neg_points": [list(p) for p in promptset.neg_points],
        "pos_points_256": _points_json(pos_256),
        "neg_points_256": _points_json(neg_256),
        "branch_index": int(branch_index),
        "scores": [float(s) for s in scores],
        "score": float(scores[int(branch_index)]),
        "sigma": float(sigma),
        "logits_size": [MAP_SIZE, MAP_SIZE],
        "dtypes": {"logits_256": "float16", "pos_map": "float16", "neg_map": "float16"},
        "image_h": image_hw[0],
        "image_w": image_hw[1],
        "segmenter": segmenter_info["name"],
        "model_type": segmenter_info.get("model_type"),
        "checkpoint_md5": segmenter_info.get("checkpoint_md5"),
        "segmenter_fingerprint": segmenter_info["fingerprint"],
    }
    atomic_write_json(directory / META_FILE, meta)
