"""Stage 8, one shard: simulated clicking with every configured policy, one JSONL line per
(image, policy).

Resume: each finished (image, policy) record is appended and fsynced to ``<out>.partial``
beside the output (not a declared output, so Snakemake does not delete it when it re-runs the
job); a rerun skips what is there (a truncated last line is ignored) and the final JSONL is
written atomically from it, sorted, at the end. A sample whose image or mask cannot be read is
logged and listed in the shard's ``failures`` and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from laplace_head.errors import LaplaceHeadError
from laplace_head.util.atomic import atomic_write_text

LOGGER = logging.getLogger(__name__)
PARTIAL_SUFFIX = ".partial"


def _read_partial(path: Path) -> list[dict]:
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the line a kill cut short; everything before it is complete
    return records


def _append(handle: Any, record: Mapping[str, Any]) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def run_shard(
    rows: Sequence[Mapping[str, Any]],
    predictor: Any,
    out_jsonl: str | os.PathLike,
    policies: Sequence[str],
    max_clicks: int,
    seed: int,
) -> dict[str, Any]:
    """Simulate ``max_clicks`` clicks per policy on every sample of ``rows`` (manifest rows).

    Returns a summary: records written, skipped (finished before), failures with reasons.
    """
    from laplace_head.dataset.images import (
        ImageReadError,
        load_image_rgb,
        load_mask,
        resize_mask_nearest,
    )
    from laplace_head.interactive.simulate import simulate_clicks

    out_jsonl = Path(out_jsonl)
    partial = out_jsonl.with_name(out_jsonl.name + PARTIAL_SUFFIX)
    records = _read_partial(partial)
    done = {(r["sample_id"], r["policy"]) for r in records}
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", encoding="utf-8") as handle:  # rewrite without a cut-off line
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    summary: dict[str, Any] = {"written": 0, "skipped": len(records), "failures": []}
    with open(partial, "a", encoding="utf-8") as handle:
        for row in tqdm(rows, desc="active prompting", unit="image"):
            sample_id = str(row["sample_id"])
            todo = [policy for policy in policies if (sample_id, policy) not in done]
            if not todo:
                continue
            try:
                image = load_image_rgb(row["image_path"])
                gt = load_mask(row["mask_path"])
                if gt.shape != image.shape[:2]:
                    gt = resize_mask_nearest(gt, *image.shape[:2])
                predictor.set_image(image)
                for policy in todo:
                    result = simulate_clicks(
                        predictor, image, gt.astype(bool), policy, max_clicks, seed, sample_id
                    )
                    record = {"sample_id": sample_id, "class": str(row["class"]), "policy": policy}
                    _append(handle, {**record, **result})
                    summary["written"] += 1
            except (ImageReadError, LaplaceHeadError, ValueError) as exc:
                LOGGER.warning("%s: skipped (%s)", sample_id, exc)
                summary["failures"].append({"sample_id": sample_id, "reason": str(exc)})
    final = sorted(_read_partial(partial), key=lambda r: (r["sample_id"], r["policy"]))
    atomic_write_text(out_jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in final))
    partial.unlink()
    LOGGER.info(
        "%s: %d records written, %d kept from an earlier attempt, %d samples failed",
        out_jsonl.name,
        summary["written"],
        summary["skipped"],
        len(summary["failures"]),
    )
    if summary["failures"] and len(summary["failures"]) == len(rows):
        raise LaplaceHeadError(
            f"every sample of {out_jsonl.name} failed (first: {summary['failures'][0]}); "
            "check the images and masks listed in the split manifest."
        )
    return summary
