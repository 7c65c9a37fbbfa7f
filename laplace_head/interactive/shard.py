"""Stage 8, one shard: simulated clicking with every configured policy, one JSONL line per
(image, policy).

The records and their file are :mod:`laplace_head.interactive.records`'. Resume: each finished
(image, policy) record is appended and fsynced to the resume file beside the output
(:func:`~laplace_head.interactive.records.partial_path`), after a first line with the
fingerprint of everything that shaped them (the caller's ``identity``: the stage-8 settings and
the posterior; the shard's samples, the policies, ``max_clicks`` and ``seed``). A rerun with the
same fingerprint skips the records there
(:func:`~laplace_head.interactive.records.read_partial` drops what is not one of them), one
with another starts over; the final JSONL is written atomically from it, sorted, at the end.
A sample whose image or mask cannot be read is logged and listed in the shard's ``failures``
and the others go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from laplace_head.errors import LaplaceHeadError
from laplace_head.interactive import records as jsonl

LOGGER = logging.getLogger(__name__)


def run_shard(
    rows: Sequence[Mapping[str, Any]],
    predictor: Any,
    out_jsonl: str | os.PathLike,
    policies: Sequence[str],
    max_clicks: int,
    seed: int,
    *,
    identity: Mapping[str, Any],
) -> dict[str, Any]:
    """Simulate ``max_clicks`` clicks per policy on every sample of ``rows`` (manifest rows).

    ``identity`` (JSON-able) names what else shapes the records - the stage-8 settings and the
    posterior - so that a resume file written with other ones is not reused.

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
    partial = jsonl.partial_path(out_jsonl)
    policies = list(policies)
    samples = [[str(row["sample_id"]), str(row["class"])] for row in rows]
    fingerprint = jsonl.resume_fingerprint(
        {
            "identity": identity,
            "samples": samples,
            "policies": policies,
            "max_clicks": int(max_clicks),
            "seed": int(seed),
        }
    )
    keys = {(sample_id, policy) for sample_id, _ in samples for policy in policies}
    fields = {"max_clicks": int(max_clicks), "seed": int(seed)}
    records = jsonl.read_partial(partial, fingerprint, keys, fields)
    done = {jsonl.record_key(r) for r in records}
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", encoding="utf-8") as handle:  # without skipped lines
        jsonl.start_partial(handle, fingerprint, records)
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
                    jsonl.append(handle, jsonl.with_class(result, row["class"]))
                    summary["written"] += 1
            except (ImageReadError, LaplaceHeadError, ValueError) as exc:
                LOGGER.warning("%s: skipped (%s)", sample_id, exc)
                summary["failures"].append({"sample_id": sample_id, "reason": str(exc)})
    jsonl.write_final(out_jsonl, jsonl.read_partial(partial, fingerprint, keys, fields))
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
