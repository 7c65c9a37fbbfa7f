"""Stage 2: write one prompt-set JSON per sample of a shard.

``prompt_sets/<split>/<safe_id>.json`` holds ``num_promptsets`` prompt sets in original-image
pixel coordinates. The draws are seeded by ``prompt_seed`` and the sample id only, so the bytes
are identical whatever the order, shard size or parallelism. Existing, loadable JSONs are
skipped unless ``force``.

One bad sample never stops a shard: everything done per sample (parsing its manifest row, the
mask, the draws, the write) runs inside one ``try``; a failure is counted and listed with its
reason in the shard summary, and the other samples are still written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from laplace_head.dataset.images import ImageReadError, load_mask, resize_mask_nearest
from laplace_head.dataset.scan import escape_line_breaks, safe_id_problem
from laplace_head.layout import ProjectLayout
from laplace_head.prompts.sampling import sample_promptsets
from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files
from laplace_head.util.faults import fault_point

LOGGER = logging.getLogger(__name__)
FIRST_CLICK_KEY = "first_click_promptsets"


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


def _identity(
    row: pd.Series, split: str, min_pairs: int, max_pairs: int, seed: int, first_click: int = 0
) -> dict:
    # first_click_promptsets is recorded only when used, so the seed's records stay as they were
    extra = {FIRST_CLICK_KEY: int(first_click)} if first_click else {}
    return extra | {
        "sample_id": _sample_id(row),
        "split": split,
        "image_path": str(row["image_path"]),
        "mask_path": str(row["mask_path"]),
        "image_h": _size(row, "image_h"),
        "image_w": _size(row, "image_w"),
        "prompt_seed": int(seed),
        "min_pairs": int(min_pairs),
        "max_pairs": int(max_pairs),
    }


def _sample_id(row: pd.Series) -> str:
    sample_id = row["sample_id"]
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(
            f"manifest row has no sample_id ({sample_id!r}); rebuild the manifests (stage 1)"
        )
    return sample_id


def _text(row: pd.Series, column: str) -> str:
    value = row[column]
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"manifest row has no {column} ({value!r}); rebuild the manifests (stage 1)"
        )
    return value


def _size(row: pd.Series, column: str) -> int:
    value = row[column]
    try:
        size = int(value)
        if size != float(value) or size < 1:
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"manifest column {column} holds {value!r}, not a pixel count; the manifest is "
            "damaged: rebuild it (stage 1)"
        ) from None
    return size


def _json_path(layout: ProjectLayout, split: str, row: pd.Series) -> Path:
    safe_id = row["safe_id"]
    problem = safe_id_problem(safe_id)
    if problem:
        raise ValueError(
            f"safe_id {safe_id!r} {problem}; it cannot name the prompt-set file: rebuild the "
            "manifests (stage 1)"
        )
    return layout.promptset_json(split, safe_id)


def build_promptset_record(
    row: pd.Series,
    split: str,
    num_promptsets: int,
    min_pairs: int,
    max_pairs: int,
    prompt_seed: int,
    first_click_promptsets: int = 0,
) -> dict:
    """The JSON record of one manifest row (mask resized to the image first if needed).

    Raises ``ValueError`` for a row that does not hold what stage 1 writes and
    ``ImageReadError`` for an unusable mask.
    """
    sample_id = _sample_id(row)
    height, width = _size(row, "image_h"), _size(row, "image_w")
    mask = load_mask(_text(row, "mask_path"))
    resized = mask.shape != (height, width)
    mask = resize_mask_nearest(mask, height, width)
    promptsets = sample_promptsets(
        mask, sample_id, num_promptsets, min_pairs, max_pairs, prompt_seed, first_click_promptsets
    )
    extra = {FIRST_CLICK_KEY: first_click_promptsets} if first_click_promptsets else {}
    return extra | {
        "sample_id": sample_id,
        "safe_id": str(row["safe_id"]),
        "class": str(row["class"]),
        "split": split,
        "image_path": _text(row, "image_path"),
        "mask_path": _text(row, "mask_path"),
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
    layout: ProjectLayout,
    num_promptsets: int,
    min_pairs: int,
    max_pairs: int,
    prompt_seed: int,
    force: bool = False,
    first_click_promptsets: int = 0,
) -> dict:
    """Write the prompt-set JSONs of one shard; return counts and per-sample failures.

    ``first_click_promptsets`` extra sets per sample hold one positive point and no negative
    (see :func:`laplace_head.prompts.sampling.sample_promptsets`).
    """
    summary = {"split": split, "generated": 0, "skipped": 0, "failed": 0, "failures": []}
    json_names = [
        layout.promptset_json(split, s).name
        for s in shard_frame["safe_id"]
        if not safe_id_problem(s)
    ]
    remove_stale_temp_files(layout.prompt_sets_dir(split), json_names)
    settings = (num_promptsets, min_pairs, max_pairs, prompt_seed, first_click_promptsets)
    for _, row in tqdm(shard_frame.iterrows(), total=len(shard_frame), desc=f"prompts {split}"):
        try:
            generated = _generate_one(row, split, layout, settings, force)
        except Exception as exc:  # noqa: BLE001 - one bad sample never stops the shard
            sample_id = escape_line_breaks(str(row.get("sample_id", "")))
            known = isinstance(exc, (ImageReadError, ValueError))
            reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            reason = escape_line_breaks(reason) or type(exc).__name__
            LOGGER.error("sample %s failed: %s", sample_id, reason)
            summary["failed"] += 1
            summary["failures"].append({"sample_id": sample_id, "reason": reason})
            continue
        if not generated:
            summary["skipped"] += 1
            continue
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


def _generate_one(
    row: pd.Series, split: str, layout: ProjectLayout, settings: tuple, force: bool
) -> bool:
    """Write the prompt-set JSON of one row unless an identical one exists; True if written."""
    num_promptsets, min_pairs, max_pairs, prompt_seed, first_click = settings
    path = _json_path(layout, split, row)
    expected = _identity(row, split, min_pairs, max_pairs, prompt_seed, first_click)
    if not force and _is_complete(path, num_promptsets + first_click, expected):
        return False
    record = build_promptset_record(
        row, split, num_promptsets, min_pairs, max_pairs, prompt_seed, first_click
    )
    atomic_write_json(path, record)
    return True
