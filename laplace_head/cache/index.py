"""Stage 4: the flat training index of one split.

The index has one row per *complete* (sample, prompt set) of stage 3, as judged by
:func:`laplace_head.cache.promptset_format.check_promptset` (the format's one owner).
Everything else a split was expected to produce but did not is a *failure row*
(sample_id, promptset_id, reason): samples of the split with no complete prompt set, prompt-set
folders that are incomplete or corrupt, prompt sets listed in the sample's prompt-set JSON but
never written, and every failure a stage-3 shard summary recorded. Stage 4 writes those rows to
``<split>_failures.csv`` beside the index, so a precompute failure stays visible downstream.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from laplace_head.cache.promptset_format import (
    ARRAY_FILES,
    META_FILE,
    check_promptset,
    list_promptset_dirs,
)
from laplace_head.errors import LaplaceHeadError
from laplace_head.util.atomic import atomic_write_csv, read_json, remove_stale_temp_files
from laplace_head.util.faults import fault_point

logger = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "sample_id",
    "safe_id",
    "class",
    "split",
    "promptset_id",
    "image_path",
    "image_h",
    "image_w",
    "mask_path",
    "logits_256_path",
    "pos_map_path",
    "neg_map_path",
    "meta_path",
    "k_pairs",
    "branch",
    "score",
]
INDEX_DTYPES = {
    "promptset_id": "int64",
    "image_h": "int64",
    "image_w": "int64",
    "k_pairs": "int64",
    "branch": "int64",
    "score": "float64",
}
FAILURE_COLUMNS = ["sample_id", "promptset_id", "reason"]
SPLIT_COLUMNS = ["sample_id", "safe_id", "class", "image_path", "image_h", "image_w", "mask_path"]
SPLIT_TEXT_DTYPES = {c: str for c in ("sample_id", "safe_id", "class", "image_path", "mask_path")}


class TrainingIndexError(LaplaceHeadError):
    """An input of stage 4 (split CSV, shard summary) is missing or malformed."""


def read_shard_failures(shard_summaries: Iterable[str | os.PathLike]) -> list[dict]:
    """The ``failures`` entries of stage-3 shard summaries, as ``{sample_id, promptset_id,
    reason}`` dicts (``promptset_id`` None for a whole-sample failure)."""
    failures = []
    for path in shard_summaries:
        try:
            summary = read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingIndexError(
                f"shard summary {str(path)!r} cannot be read ({exc}); re-run precompute_sam "
                "for that shard (delete the file to force it)."
            ) from exc
        for entry in summary.get("failures", []) or []:
            promptset_id = entry.get("promptset_id")
            stage = f" ({entry['stage']})" if entry.get("stage") else ""
            failures.append(
                _failure(
                    str(entry.get("sample_id")),
                    None if promptset_id is None else int(promptset_id),
                    f"precompute{stage}: {entry.get('reason', 'unknown')}",
                )
            )
    return failures


def _read_csv_with_columns(
    path: str | os.PathLike, columns: Sequence[str], dtypes: dict, what: str, rule: str
) -> pd.DataFrame:
    """Read a CSV (empty file -> no rows) and require ``columns``; text stays text."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=dtypes)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(columns))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainingIndexError(f"{what} {str(path)!r} lacks columns {missing}; re-run {rule}.")
    return frame


def _read_split_csv(split_csv: Path) -> pd.DataFrame:
    if not split_csv.is_file():
        raise TrainingIndexError(
            f"split manifest {str(split_csv)!r} does not exist; run build_manifests."
        )
    frame = _read_csv_with_columns(
        split_csv, SPLIT_COLUMNS, SPLIT_TEXT_DTYPES, "split manifest", "build_manifests"
    )
    return frame.sort_values("sample_id", kind="mergesort").reset_index(drop=True)


def _expected_promptset_ids(
    promptset_json: Callable[[str], Path] | None, safe_id: str
) -> set[int] | None:
    if promptset_json is None:
        return None
    path = promptset_json(safe_id)
    try:
        return {int(p["promptset_id"]) for p in read_json(path)["promptsets"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # stage 2 failed for this sample; the shard summary says why


def _index_sample(
    sample: Mapping[str, Any], split: str, sample_dir: Path, expected: set[int] | None
) -> tuple[list[dict], list[dict]]:
    rows, failures = [], []
    dirs = list_promptset_dirs(sample_dir)
    for promptset_id in sorted(expected - dirs.keys()) if expected else []:
        failures.append(_failure(sample["sample_id"], promptset_id, "not written"))
    for promptset_id, promptset_dir in sorted(dirs.items()):
        fields, reason = check_promptset(promptset_dir)
        if reason:
            failures.append(_failure(sample["sample_id"], promptset_id, reason))
            continue
        row = {column: sample[column] for column in SPLIT_COLUMNS}
        row.update(split=split, promptset_id=promptset_id)
        for name, filename in ARRAY_FILES.items():
            row[f"{name}_path"] = str(promptset_dir / filename)
        row["meta_path"] = str(promptset_dir / META_FILE)
        row.update(fields)
        rows.append(row)
    return rows, failures


def build_index(
    split: str,
    split_csv: str | os.PathLike,
    precompute_split_dir: str | os.PathLike,
    shard_summaries: Sequence[str | os.PathLike] = (),
    promptset_json: Callable[[str], Path] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Index every complete prompt set of one split.

    Parameters
    ----------
    split
        ``train``, ``val`` or ``test`` (written into the ``split`` column).
    split_csv
        The split's manifest (``manifests/<split>.csv``); only its samples are indexed.
    precompute_split_dir
        ``sam_precompute/<split>/``. Paths in the index are built from it as given.
    shard_summaries
        Stage-3 shard summaries (``_shards/shard_NNNN.json``); their ``failures`` are reported.
    promptset_json
        Optional ``safe_id -> `` the sample's stage-2 JSON (the layout's ``promptset_json`` of
        the split): when given, prompt sets listed there but never written are reported too.

    Returns
    -------
    index : pandas.DataFrame
        Columns :data:`INDEX_COLUMNS`, sorted by (sample_id, promptset_id); possibly empty.
    report : dict
        ``split, n_rows, n_samples, n_split_samples, mean_k_pairs, n_failures,
        samples_without_promptsets`` and ``failures`` (a DataFrame with :data:`FAILURE_COLUMNS`,
        sorted, one row per (sample_id, promptset_id, reason)).
    """
    split_frame = _read_split_csv(Path(split_csv))
    precompute_split_dir = Path(precompute_split_dir)
    rows: list[dict] = []
    failures = read_shard_failures(shard_summaries)
    without = []
    for sample in split_frame.to_dict("records"):
        expected = _expected_promptset_ids(promptset_json, sample["safe_id"])
        sample_rows, sample_failures = _index_sample(
            sample, split, precompute_split_dir / sample["safe_id"], expected
        )
        rows.extend(sample_rows)
        failures.extend(sample_failures)
        fault_point("build_training_index")
        if not sample_rows:
            without.append(sample["sample_id"])
            failures.append(_failure(sample["sample_id"], None, "no complete prompt set"))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).astype(INDEX_DTYPES)
    index = index.sort_values(["sample_id", "promptset_id"], kind="mergesort")
    index = index.reset_index(drop=True)
    failure_frame = _failure_frame(failures)
    report = {
        "split": split,
        "n_rows": len(index),
        "n_samples": int(index["sample_id"].nunique()),
        "n_split_samples": len(split_frame),
        "mean_k_pairs": float(index["k_pairs"].mean()) if len(index) else float("nan"),
        "n_failures": len(failure_frame),
        "samples_without_promptsets": without,
        "failures": failure_frame,
    }
    return index, report


def _failure(sample_id: str, promptset_id: int | None, reason: str) -> dict:
    return {"sample_id": sample_id, "promptset_id": promptset_id, "reason": reason}


def _failure_frame(failures: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    frame["promptset_id"] = frame["promptset_id"].astype("Int64")
    frame = frame.drop_duplicates().sort_values(
        ["sample_id", "promptset_id", "reason"], kind="mergesort", na_position="first"
    )
    return frame.reset_index(drop=True)


def read_index(index_csv: str | os.PathLike) -> pd.DataFrame:
    """Read an index CSV written by :func:`write_training_index` with its column dtypes.

    Text columns stay text even when they look numeric (a class named ``1``).
    """
    text_columns = {c: str for c in INDEX_COLUMNS if c not in INDEX_DTYPES}
    frame = _read_csv_with_columns(
        index_csv, INDEX_COLUMNS, text_columns, "index", "build_training_index"
    )
    for column, dtype in INDEX_DTYPES.items():
        frame[column] = frame[column].astype(dtype)
    return frame[INDEX_COLUMNS]


def write_training_index(
    split: str,
    split_csv: str | os.PathLike,
    precompute_split_dir: str | os.PathLike,
    shard_summaries: Sequence[str | os.PathLike],
    index_csv: str | os.PathLike,
    failures_csv: str | os.PathLike,
    promptset_json: Callable[[str], Path] | None = None,
) -> dict:
    """Stage 4: build the index of one split and write it (and its failures) atomically.

    Returns the report of :func:`build_index`.
    """
    index, report = build_index(
        split, split_csv, precompute_split_dir, shard_summaries, promptset_json
    )
    for path in (Path(failures_csv), Path(index_csv)):
        remove_stale_temp_files(path.parent, [path.name])
    atomic_write_csv(failures_csv, report["failures"])
    atomic_write_csv(index_csv, index)
    logger.info(
        "%s: %d rows, %d unique samples (of %d in the split), mean k_pairs %.2f -> %s",
        split,
        report["n_rows"],
        report["n_samples"],
        report["n_split_samples"],
        report["mean_k_pairs"],
        index_csv,
    )
    if report["n_failures"]:
        logger.warning(
            "%s: %d failure rows (%d samples without any complete prompt set) -> %s",
            split,
            report["n_failures"],
            len(report["samples_without_promptsets"]),
            failures_csv,
        )
        for entry in report["failures"].head(20).to_dict("records"):
            logger.warning("  %s promptset %s: %s", *entry.values())
    return report
