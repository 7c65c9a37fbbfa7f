"""Stage 2: write one prompt-set JSON per sample of a shard.

``prompt_sets/<split>/<safe_id>.json`` holds ``num_promptsets`` prompt sets in original-image
pixel coordinates. The draws are seeded by ``prompt_seed`` and the sample id only, so the bytes
are identical whatever the order, shard size or parallelism. Existing, loadable JSONs are
skipped unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from laplace_head.dataset.images import ImageReadError, load_mask, resize_mask_nearest
from laplace_head.prompts.sampling import sample_promptsets
from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files
from laplace_head.util.faults import fault_point

LOGGER = logging.getLogger(__name__)


def promptset_json_path(prompt_dir: str | os.PathLike, split: str, safe_id: str) -> Path:
    """``<prompt_dir>/<split>/<safe_id>.json`` (the layout's ``promptset_json`` for the project's
    ``prompt_sets`` folder)."""
    return Path(prompt_dir) / split / f"{safe_id}.json"


def _is_complete(path: Path, num_promptsets: int, expected: dict) -> bool:
    """True when ``path`` is a loadable record drawn from the same sample with the same settings.

    A record made with another ``prompt_seed``/``min_pairs``/``max_pairs`` (config changed) or for
    another image/mask is stale and gets regenerated.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        same = all(record[key] == value for key, value in expected.items())
        return same and len(record["promptsets"]) == num_promptsets
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _identity(row: pd.Series, split: str, min_pairs: int, max_pairs: int, seed: int) -> dict:
    return {
        "sample_id": str(row["sample_id"]),
        "split": split,
        "image_path": str(row["image_path"]),
        "mask_path": str(row["mask_path"]),
        "image_h": int(row["image_h"]),
        "image_w": int(row["image_w"]),
        "prompt_seed": int(seed),
        "min_pairs": int(min_pairs),
        "max_pairs": int(max_pairs),
    }


def build_promptset_record(
    row: pd.Series,
    split: str,
    num_promptsets: int,
    min_pairs: int,
    max_pairs: int,
    prompt_seed: int,
) -> dict:
    """The JSON record of one manifest row (mask resized to the image first if needed)."""
    mask = load_mask(row["mask_path"])
    height, width = int(row["image_h"]), int(row["image_w"])
    resized = mask.shape != (height, width)
    mask = resize_mask_nearest(mask, height, width)
    promptsets = sample_promptsets(
        mask, str(row["sample_id"]), num_promptsets, min_pairs, max_pairs, prompt_seed
    )
    return {
        "sample_id": str(row["sample_id"]),
        "safe_id": str(row["safe_id"]),
        "class": str(row["class"]),
        "split": split,
        "image_path": str(row["image_path"]),
        "mask_path": str(row["mask_path"]),
        "image_h": height,
        "image_w": width,
        "mask_resized": bool(resized),
        "prompt_seed": int(prompt_seed),
        "min_pairs": int(min_pairs),
        "max_pairs": int(max_pairs),
        "promptsets": [p.to_json() for p in promptsets],
    }


def generate_promptsets_shard(
    shard_frame: pd.DataFrame,
    split: str,
    prompt_dir: str | os.PathLike,
    num_promptsets: int,
    min_pairs: int,
    max_pairs: int,
    prompt_seed: int,
    force: bool = False,
) -> dict:
    """Write the prompt-set JSONs of one shard; return counts and per-sample failures."""
    summary = {"split": split, "generated": 0, "skipped": 0, "failed": 0, "failures": []}
    json_names = [promptset_json_path(prompt_dir, split, s).name for s in shard_frame["safe_id"]]
    remove_stale_temp_files(Path(prompt_dir) / split, json_names)
    for _, row in tqdm(shard_frame.iterrows(), total=len(shard_frame), desc=f"prompts {split}"):
        path = promptset_json_path(prompt_dir, split, row["safe_id"])
        expected = _identity(row, split, min_pairs, max_pairs, prompt_seed)
        if not force and _is_complete(path, num_promptsets, expected):
            summary["skipped"] += 1
            continue
        try:
            record = build_promptset_record(
                row, split, num_promptsets, min_pairs, max_pairs, prompt_seed
            )
        except (ImageReadError, ValueError) as exc:
            LOGGER.error("sample %s failed: %s", row["sample_id"], exc)
            summary["failed"] += 1
            summary["failures"].append({"sample_id": row["sample_id"], "reason": str(exc)})
            continue
        atomic_write_json(path, record)
        summary["generated"] += 1
        fault_point("generate_promptsets")
    LOGGER.info(
        "split %s: generated %d, skipped %d, failed %d",
        split,
        summary["generated"],
        summary["skipped"],
        summary["failed"],
    )
    return summary
