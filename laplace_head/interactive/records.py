"""The stage-8 JSONL: one record per (image, policy), its keys and its encoding, in one place.

Written by the shard runner (:mod:`laplace_head.interactive.shard`, from the results of
:func:`~laplace_head.interactive.simulate.simulate_clicks`) and read by the report
(:mod:`laplace_head.evaluation.active_prompting`). A record (:func:`click_record`):

- ``sample_id``, ``class``, ``policy``, ``seed``, ``max_clicks``, ``image_hw`` ([H, W]);
- ``n_clicks`` and ``clicks``: one ``{"x", "y", "label", "row", "col"}`` per click (x, y in
  image pixels, row, col on the 256 grid);
- ``iou_base`` and ``iou_head``: the IoU of the base and of the head mask after each click
  (:func:`iou_key`); ``no_error``: whether the oracle found no error left after each click;
- ``stop_reason``: None when all ``max_clicks`` clicks were made, else why the run stopped.

One JSON object per line, keys sorted. While a shard runs, finished records are appended to
:func:`partial_path` and fsynced. The resume file's first line is ``{RESUME_FINGERPRINT: ...}``
(:func:`resume_fingerprint` of everything that shaped its records); :func:`read_partial` keeps
its records only while that fingerprint is the shard's, and skips (with a warning naming the
file and line) a line that is cut short, not UTF-8, not a record, a duplicate, or not one of the
shard's (sample_id, policy) pairs. The final JSONL has no fingerprint line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from laplace_head.util.atomic import atomic_write_text

SAMPLE_ID = "sample_id"
CLASS = "class"
POLICY = "policy"
PARTIAL_SUFFIX = ".partial"
#: The key of a resume file's first line.
RESUME_FINGERPRINT = "resume_fingerprint"

LOGGER = logging.getLogger(__name__)


def iou_key(model: str) -> str:
    """The key of a model's IoU list (``head`` or ``base``)."""
    return f"iou_{model}"


def click_entry(x: float, y: float, label: int, cell: tuple[int, int]) -> dict[str, Any]:
    """One entry of a record's ``clicks``."""
    return {"x": x, "y": y, "label": label, "row": cell[0], "col": cell[1]}


def click_record(
    sample_id: str,
    policy: str,
    seed: int,
    max_clicks: int,
    image_hw: tuple[int, int],
    clicks: Sequence[Mapping[str, Any]],
    iou_base: Sequence[float],
    iou_head: Sequence[float],
    no_error: Sequence[bool],
    stop_reason: str | None,
) -> dict[str, Any]:
    """A record without its ``class`` (see the module docstring; :func:`with_class` adds it)."""
    return {
        SAMPLE_ID: sample_id,
        POLICY: policy,
        "seed": int(seed),
        "max_clicks": int(max_clicks),
        "image_hw": list(image_hw),
        "n_clicks": len(clicks),
        "clicks": list(clicks),
        iou_key("base"): list(iou_base),
        iou_key("head"): list(iou_head),
        "no_error": list(no_error),
        "stop_reason": stop_reason,
    }


def with_class(record: Mapping[str, Any], cls: str) -> dict[str, Any]:
    """The record with the sample's class."""
    return {**record, CLASS: str(cls)}


def record_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """(sample_id, policy): what a record is of, and the order of a shard's final JSONL."""
    return record[SAMPLE_ID], record[POLICY]


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def partial_path(out_jsonl: str | os.PathLike) -> Path:
    """The resume file beside a shard's JSONL (not a declared output, so Snakemake does not
    delete it when it re-runs the job)."""
    out_jsonl = Path(out_jsonl)
    return out_jsonl.with_name(out_jsonl.name + PARTIAL_SUFFIX)


def resume_fingerprint(identity: Mapping[str, Any]) -> str:
    """A digest of ``identity`` (JSON-able: the settings, posterior and sample ids that shape a
    shard's records)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_line(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


def read_partial(
    path: str | os.PathLike,
    fingerprint: str,
    keys: set[tuple[str, str]],
    fields: Mapping[str, Any],
) -> list[dict]:
    """The reusable records of a resume file (none when it does not exist).

    All of them are dropped (with a log line) when the file's first line does not carry
    ``fingerprint``. A record is kept when it is a JSON object whose :func:`record_key` is in
    ``keys`` and whose ``fields`` hold the given values; the first record of a key wins. Every
    other line is skipped with a warning naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().splitlines()
    try:
        header = _parse_line(lines[0]) if lines else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    found = header.get(RESUME_FINGERPRINT) if isinstance(header, dict) else None
    if found != fingerprint:
        LOGGER.info(
            "%s: written with other settings, posterior, samples or policies "
            "(fingerprint %s, now %s); its %d lines are not reused",
            path,
            found,
            fingerprint,
            max(len(lines) - 1, 0),
        )
        return []
    records: dict[tuple[str, str], dict] = {}
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        reason = None
        try:
            record = _parse_line(raw)
        except UnicodeDecodeError:
            reason = "not UTF-8"
        except json.JSONDecodeError:
            reason = "not JSON (cut short by a kill?)"
        else:
            if not isinstance(record, dict):
                reason = "not a JSON object"
            elif not isinstance(record.get(SAMPLE_ID), str) or not isinstance(
                record.get(POLICY), str
            ):
                reason = f"no string {SAMPLE_ID} and {POLICY}"
            elif record_key(record) not in keys:
                reason = f"{record_key(record)} is not one of this shard's samples and policies"
            elif any(record.get(k) != v for k, v in fields.items()):
                reason = f"its {sorted(fields)} are not {dict(fields)}"
            elif record_key(record) in records:
                reason = f"a second record of {record_key(record)}"
        if reason is not None:
            LOGGER.warning("%s line %d skipped: %s", path, number, reason)
            continue
        records[record_key(record)] = record
    return list(records.values())


def start_partial(handle: Any, fingerprint: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Write a resume file's fingerprint line and ``records`` to an open text file, fsynced."""
    handle.write(_line({RESUME_FINGERPRINT: fingerprint}))
    rewrite(handle, records)
    handle.flush()
    os.fsync(handle.fileno())


def rewrite(handle: Any, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` to an open text file (no fsync)."""
    for record in records:
        handle.write(_line(record))


def append(handle: Any, record: Mapping[str, Any]) -> None:
    """Append one record to an open resume file and fsync it."""
    handle.write(_line(record))
    handle.flush()
    os.fsync(handle.fileno())


def write_final(out_jsonl: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """The shard's JSONL, atomically: ``records`` sorted by :func:`record_key`."""
    ordered = sorted(records, key=record_key)
    atomic_write_text(out_jsonl, "".join(_line(r) for r in ordered))


def read_records(jsonl_paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Every record of the shards' JSONL files, in file order."""
    records = []
    for path in jsonl_paths:
        text = Path(path).read_text(encoding="utf-8")
        records.extend(json.loads(line) for line in text.splitlines() if line.strip())
    return records
