"""On-disk layout of stage 3's outputs: paths, completeness check, writer and reader.

``sam_precompute/<split>/<safe_id>/promptset_NNNN/`` holds ``logits_256.npy`` ((256, 256)
float16 base-segmenter logits), ``pos_map.npy`` / ``neg_map.npy`` ((256, 256) float16 Gaussian
prompt maps) and ``meta.json`` (written last: its presence marks completion). Stage 3 writes them
(:func:`write_promptset`) and skips what :func:`is_promptset_complete` accepts; stage 4 checks
them (:func:`check_promptset`, headers only) and the sanity panels read them
(:func:`read_promptset_outputs`). This module is the format's one owner: its file names, dtypes
and meta keys are written and read nowhere else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from laplace_head.prompts.sampling import PromptSet, gaussian_prompt_map, rescale_points
from laplace_head.segmenters import Prediction
from laplace_head.settings import GRID_SIZE
from laplace_head.util.atomic import (
    atomic_save_npy,
    atomic_write_json,
    read_json,
    remove_stale_temp_files,
)

META_FORMAT_VERSION = 1
PROMPTSET_DIR_FORMAT = "promptset_{:04d}"
PROMPTSET_DIR_PATTERN = re.compile(r"^promptset_(\d{4,})$")
# Array name -> file; the training index names each file in the column ``<name>_path``.
ARRAY_FILES = {"logits_256": "logits_256.npy", "pos_map": "pos_map.npy", "neg_map": "neg_map.npy"}
ARRAY_DTYPE = np.dtype("float16")
ARRAY_SHAPE = (GRID_SIZE, GRID_SIZE)
META_FILE = "meta.json"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def promptset_dir(out_split_dir: str | os.PathLike, safe_id: str, promptset_id: int) -> Path:
    """``<out_split_dir>/<safe_id>/promptset_NNNN``."""
    return Path(out_split_dir) / safe_id / PROMPTSET_DIR_FORMAT.format(int(promptset_id))


def read_promptset_outputs(directory: str | os.PathLike) -> dict[str, Any]:
    """Load a finished prompt set: ``logits_256``, ``pos_map``, ``neg_map`` ((256, 256) float16)
    and ``meta`` (dict)."""
    directory = Path(directory)
    out: dict[str, Any] = {
        name: np.load(directory / filename, allow_pickle=False)
        for name, filename in ARRAY_FILES.items()
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
        if any(check_array_file(directory / name) for name in ARRAY_FILES.values()):
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


def check_logits(logits: np.ndarray) -> np.ndarray:
    """A base segmenter's logits as float32, refused (ValueError) unless a finite (256, 256)
    array: the rule for every logits plane that reaches the head (stage 3, the predictor)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape != ARRAY_SHAPE or not np.isfinite(logits).all():
        bad = int(np.size(logits) - np.isfinite(logits).sum())
        raise ValueError(
            f"segmenter returned non-finite or mis-shaped logits {logits.shape} ({bad} non-finite "
            f"values); expected a finite {ARRAY_SHAPE} array"
        )
    return logits


def stored_logits(logits: np.ndarray) -> np.ndarray:
    """Base logits as stage 3 stores them: float16, clipped to its finite range (float16
    overflows to inf beyond +-65504; real logits never get there, but inf is never written)."""
    return np.clip(np.asarray(logits, dtype=np.float32), -_FLOAT16_MAX, _FLOAT16_MAX).astype(
        np.float16
    )


def prompt_maps(
    pos_points: np.ndarray, neg_points: np.ndarray, image_hw: tuple[int, int], sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pos_map, neg_map, pos_256, neg_256)``: the (256, 256) float16 Gaussian prompt maps of
    (k, 2) (x, y) image-pixel points, and the points rescaled to the 256 grid."""
    pos_256 = rescale_points(np.asarray(pos_points), image_hw, GRID_SIZE)
    neg_256 = rescale_points(np.asarray(neg_points), image_hw, GRID_SIZE)
    return (
        gaussian_prompt_map(pos_256, sigma, GRID_SIZE),
        gaussian_prompt_map(neg_256, sigma, GRID_SIZE),
        pos_256,
        neg_256,
    )


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
    logits = check_logits(logits)
    image_hw = (int(record["image_h"]), int(record["image_w"]))
    pos_map, neg_map, pos_256, neg_256 = prompt_maps(
        promptset.pos_points, promptset.neg_points, image_hw, sigma
    )
    atomic_save_npy(directory / ARRAY_FILES["logits_256"], stored_logits(logits))
    atomic_save_npy(directory / ARRAY_FILES["pos_map"], pos_map)
    atomic_save_npy(directory / ARRAY_FILES["neg_map"], neg_map)
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
        "logits_size": list(ARRAY_SHAPE),
        "dtypes": {"logits_256": "float16", "pos_map": "float16", "neg_map": "float16"},
        "image_h": image_hw[0],
        "image_w": image_hw[1],
        "segmenter": segmenter_info["name"],
        "model_type": segmenter_info.get("model_type"),
        "checkpoint_md5": segmenter_info.get("checkpoint_md5"),
        "segmenter_fingerprint": segmenter_info["fingerprint"],
    }
    atomic_write_json(directory / META_FILE, meta)


def list_promptset_dirs(sample_dir: Path) -> dict[int, Path]:
    """``{promptset_id: folder}`` of the prompt-set folders under one sample's folder."""
    if not sample_dir.is_dir():
        return {}
    found = {}
    for child in sample_dir.iterdir():
        match = PROMPTSET_DIR_PATTERN.fullmatch(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return found


def check_array_file(path: Path) -> str | None:
    """Reason why ``path`` is not a float16 (256, 256) ``.npy`` file, or None if it is.

    Only the header is read (a few hundred bytes); the file size is checked against it so a
    truncated array is caught too.
    """
    if not path.is_file():
        return f"{path.name} missing"
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _fortran_order, dtype = read_header(handle)
            header_end = handle.tell()
    except Exception as exc:  # noqa: BLE001 - any header problem makes the prompt set unusable
        return f"{path.name} unreadable ({type(exc).__name__}: {exc})"
    if tuple(shape) != ARRAY_SHAPE or dtype != ARRAY_DTYPE:
        return f"{path.name} has shape {tuple(shape)} dtype {dtype}; expected (256, 256) float16"
    expected = header_end + ARRAY_DTYPE.itemsize * ARRAY_SHAPE[0] * ARRAY_SHAPE[1]
    if path.stat().st_size < expected:
        return f"{path.name} truncated ({path.stat().st_size} of {expected} bytes)"
    return None


def meta_fields(meta: Mapping[str, Any]) -> tuple[int, int, float]:
    """``(k_pairs, branch, score)`` from a prompt set's ``meta.json``.

    ``k`` is the number of point pairs; ``branch_index`` the index of the kept SAM mask output;
    ``score`` that branch's predicted IoU (all three written by :func:`write_promptset`).

    Raises
    ------
    KeyError, TypeError, ValueError
        If a field is missing or not a number.
    """
    return int(meta["k"]), int(meta["branch_index"]), float(meta["score"])


def check_promptset(promptset_dir: Path) -> tuple[dict | None, str | None]:
    """Check one ``promptset_NNNN`` folder.

    Returns
    -------
    tuple
        ``({"k_pairs", "branch", "score"}, None)`` when complete, else ``(None, reason)``.
    """
    for filename in ARRAY_FILES.values():
        reason = check_array_file(promptset_dir / filename)
        if reason:
            return None, reason
    meta_path = promptset_dir / META_FILE
    if not meta_path.is_file():
        return None, f"{META_FILE} missing"
    try:
        k_pairs, branch, score = meta_fields(read_json(meta_path))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{META_FILE} unreadable ({type(exc).__name__}: {exc})"
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return None, f"{META_FILE} lacks k/branch/score ({type(exc).__name__}: {exc})"
    return {"k_pairs": k_pairs, "branch": branch, "score": score}, None
