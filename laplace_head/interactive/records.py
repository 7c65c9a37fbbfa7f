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
:func:`partial_path` and fsynced; a truncated last line (a kill) is ignored when it is read back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from laplace_head.util.atomic import atomic_write_text

SAMPLE_ID = "sample_id"
CLASS = "class"
POLICY = "policy"
PARTIAL_SUFFIX = ".partial"


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


def _parse(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the line a kill cut short; everything before it is complete
    return records


def read_partial(path: str | os.PathLike) -> list[dict]:
    """The complete records of a resume file (none when it does not exist)."""
    path = Path(path)
    return _parse(path.read_text(encoding="utf-8")) if path.is_file() else []


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
