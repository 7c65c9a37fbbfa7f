"""Stage 3: run the frozen base segmenter over every prompt set of a shard and cache its outputs.

For each prompt set the stage writes, under ``sam_precompute/<split>/<safe_id>/promptset_NNNN/``:

- ``logits_256.npy``: (256, 256) float16 base-segmenter logits (SAM mask = logits > 0),
- ``pos_map.npy`` / ``neg_map.npy``: (256, 256) float16 Gaussian prompt maps,
- ``meta.json``: points (original and 256-grid), k, kept branch and scores, sigma, dtypes,
  image size and the segmenter's identity. Written last: its presence marks completion.

A prompt set is skipped when its four files exist, load, and its ``meta.json`` matches the
current prompts, ``sigma`` and segmenter fingerprint (so switching backend or checkpoint
recomputes instead of silently keeping stale logits). An image whose prompt sets are all
complete is not even read. A sample that fails (unreadable image, missing prompt JSON, segmenter
exception) is logged and listed in the shard summary; the other samples still complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from laplace_head.cache.promptset_format import (
    ARRAY_FILES,
    META_FILE,
    is_promptset_complete,
    promptset_dir,
    read_promptset_outputs,
    write_promptset,
)
from laplace_head.dataset.images import ImageReadError, load_image_rgb
from laplace_head.dataset.scan import safe_id_problem
from laplace_head.dataset.sharding import shard_names, shard_rows
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import ProjectLayout, shard_name
from laplace_head.prompts.sampling import PromptSet
from laplace_head.segmenters import BaseSegmenter
from laplace_head.util.atomic import atomic_write_json, read_json, remove_stale_temp_files
from laplace_head.util.faults import fault_point

LOGGER = logging.getLogger(__name__)

LOG_EVERY = 100
_MAX_PENDING_WRITES = 256
__all__ = [
    "ARRAY_FILES",
    "META_FILE",
    "precompute_shard",
    "promptset_dir",
    "read_promptset_outputs",
    "run_precompute",
]
_REQUIRED_KEYS = ("sample_id", "safe_id", "image_path", "image_h", "image_w")


def _read_prompt_record(path: Path) -> dict[str, Any]:
    try:
        record = read_json(path)
        record["promptsets"] = [PromptSet.from_json(p) for p in record["promptsets"]]
        missing = [k for k in _REQUIRED_KEYS if k not in record]
        if missing:
            raise KeyError(f"missing keys {missing}")
        _check_safe_id(record["safe_id"], path)
    except FileNotFoundError as exc:
        raise LaplaceHeadError(f"prompt JSON {str(path)!r} is missing") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LaplaceHeadError(
            f"prompt JSON {str(path)!r} is unreadable ({type(exc).__name__}: {exc})"
        ) from exc
    return record


def _check_safe_id(safe_id: Any, path: Path) -> None:
    """The record's ``safe_id`` names the output folder: it must be the JSON's own file stem
    (stage 2 writes ``<safe_id>.json``) and one plain path component, so that no content of a
    prompt JSON can make stage 3 write outside ``sam_precompute/<split>/``."""
    text = str(safe_id)
    if text != path.stem:
        raise ValueError(
            f"safe_id {text!r} is not the file's own name {path.stem!r}; delete the JSON and "
            "re-run generate_promptsets"
        )
    problem = safe_id_problem(safe_id)  # the name rule of stage 1 (scan) and stage 2
    if problem:
        raise ValueError(
            f"safe_id {text!r} {problem}; stage 1 refuses such names, so this JSON was not "
            "written from the current manifests: rebuild them (build_manifests) and re-run "
            "generate_promptsets"
        )


class _ShardRun:
    """Counters, failures and timings of one :func:`precompute_shard` call."""

    def __init__(self, tracker: Any, log_every: int, write_workers: int) -> None:
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.failures: list[dict[str, Any]] = []
        self.samples_failed = 0
        self.segmenter_failures = 0
        self.samples_reaching_segmenter = 0
        self.n_images_encoded = 0
        self.timing = {"image_read": 0.0, "set_image": 0.0, "predict": 0.0, "write_wait": 0.0}
        self.tracker = tracker
        self.log_every = log_every
        self._next_log = log_every
        # Writes (4 fsynced files per prompt set) overlap the next image's encoding.
        self._executor = ThreadPoolExecutor(write_workers) if write_workers > 0 else None
        self._writes: deque[tuple[Future, str, str, int]] = deque()

    def submit_write(self, sample_id: str, safe_id: str, promptset_id: int, *args: Any) -> None:
        """Run ``write_promptset(*args)`` (in the writer pool when there is one)."""
        future: Future = Future()
        if self._executor is None:
            start = time.perf_counter()
            try:
                future.set_result(write_promptset(*args))
            except ValueError as exc:
                future.set_exception(exc)
            self.timing["write_wait"] += time.perf_counter() - start
        else:
            future = self._executor.submit(write_promptset, *args)
        self._writes.append((future, sample_id, safe_id, promptset_id))
        self.collect(max_pending=_MAX_PENDING_WRITES)

    def collect(self, max_pending: int = 0) -> None:
        """Count finished writes; wait for the oldest while more than ``max_pending`` are open.

        A ``ValueError`` (bad logits) fails that prompt set; anything else (disk full,
        permissions) is systemic and propagates.
        """
        start = time.perf_counter()
        while self._writes and (self._writes[0][0].done() or len(self._writes) > max_pending):
            future, sample_id, safe_id, promptset_id = self._writes.popleft()
            try:
                future.result()
            except ValueError as exc:
                self.fail(sample_id, safe_id, promptset_id, "output", str(exc))
                self.counts["failed"] += 1
                continue
            self.counts["done"] += 1
            fault_point("precompute_sam")
        if self._executor is not None:
            self.timing["write_wait"] += time.perf_counter() - start

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def processed(self) -> int:
        return sum(self.counts.values())

    def fail(self, sample_id: Any, safe_id: Any, promptset_id: int | None, stage: str, reason: str):
        LOGGER.error(
            "precompute failed: %s promptset %s (%s): %s", sample_id, promptset_id, stage, reason
        )
        failure = dict(sample_id=sample_id, safe_id=safe_id, promptset_id=promptset_id, stage=stage)
        self.failures.append({**failure, "reason": reason})

    def maybe_log(self, force: bool = False) -> None:
        if self.processed < self._next_log and not force:
            return
        while self._next_log <= self.processed:
            self._next_log += self.log_every
        LOGGER.info("precompute: %s", self.counts)
        if self.tracker is not None:
            self.tracker.log({f"precompute/{key}": n for key, n in self.counts.items()})


def _run_sample(
    record: dict[str, Any],
    out_split_dir: Path,
    segmenter: BaseSegmenter,
    sigma: float,
    run: _ShardRun,
) -> None:
    promptsets: list[PromptSet] = record["promptsets"]
    fingerprint = segmenter.info["fingerprint"]
    directories = [
        promptset_dir(out_split_dir, record["safe_id"], p.promptset_id) for p in promptsets
    ]
    pending = [
        (p, d)
        for p, d in zip(promptsets, directories)
        if not is_promptset_complete(d, p, sigma, fingerprint)
    ]
    run.counts["skipped"] += len(promptsets) - len(pending)
    if not pending:
        return
    sample_id, safe_id = record["sample_id"], record["safe_id"]
    stage = "image"
    try:
        start = time.perf_counter()
        image = load_image_rgb(record["image_path"])
        expected = (int(record["image_h"]), int(record["image_w"]))
        if image.shape[:2] != expected:
            raise ImageReadError(
                f"image is now {image.shape[0]}x{image.shape[1]} but was {expected[0]}x"
                f"{expected[1]} when validated; re-run build_manifests"
            )
        run.timing["image_read"] += time.perf_counter() - start
        stage = "segmenter"
        run.samples_reaching_segmenter += 1
        start = time.perf_counter()
        segmenter.set_image(image)
        run.n_images_encoded += 1
        run.timing["set_image"] += time.perf_counter() - start
        start = time.perf_counter()
        predictions = segmenter.predict_batch(
            [
                (
                    np.asarray(p.pos_points + p.neg_points, dtype=np.float64),
                    np.array([1] * p.k + [0] * len(p.neg_points)),
                )
                for p, _ in pending
            ]
        )
        run.timing["predict"] += time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the shard
        reason = f"{type(exc).__name__}: {exc}"
        if stage == "segmenter":
            run.segmenter_failures += 1
            LOGGER.debug("segmenter traceback for %s", sample_id, exc_info=True)
        run.fail(sample_id, safe_id, None, stage, reason)
        run.counts["failed"] += len(pending)
        run.samples_failed += 1
        return
    info = segmenter.info
    for (promptset, directory), prediction in zip(pending, predictions):
        args = (directory, record, promptset, prediction, sigma, info)
        run.submit_write(sample_id, safe_id, promptset.promptset_id, *args)


def precompute_shard(
    prompt_json_paths: Sequence[str | os.PathLike],
    out_split_dir: str | os.PathLike,
    segmenter: BaseSegmenter,
    sigma: float,
    summary_path: str | os.PathLike,
    tracker: Any = None,
    sample_ids: Sequence[str] | None = None,
    split: str | None = None,
    shard: str | None = None,
    log_every: int = LOG_EVERY,
    write_workers: int = 4,
) -> dict[str, Any]:
    """Precompute logits and prompt maps for every prompt set of one shard.

    Parameters
    ----------
    prompt_json_paths
        One stage-2 prompt JSON per sample (``prompt_sets/<split>/<safe_id>.json``).
    out_split_dir
        ``sam_precompute/<split>``; outputs go to ``<safe_id>/promptset_NNNN/`` below it.
    segmenter
        A loaded base segmenter (loaded once per job by the caller).
    sigma
        Std, in pixels of the 256 grid, of each prompt point's Gaussian.
    summary_path
        Where the shard summary JSON is written (atomically, at the end).
    tracker
        Optional :class:`laplace_head.util.tracking.Tracker`; ``precompute/done|skipped|failed`` are
        logged every ``log_every`` prompt sets and at the end.
    sample_ids
        Ids of the samples, parallel to ``prompt_json_paths`` (used in failure records when a
        prompt JSON cannot be read; otherwise the JSON's own ``sample_id`` is used).
    split, shard
        Labels for the progress bar and the summary.
    write_workers
        Threads writing the output files while the next image is encoded (0: write inline).

    Returns
    -------
    dict
        The summary: ``done``, ``skipped``, ``failed`` (prompt-set counts), ``n_samples``,
        ``n_promptsets``, ``samples_failed``, ``n_images_encoded``, ``failures`` (list of
        {sample_id, safe_id, promptset_id|None, stage, reason}), ``sigma``, ``segmenter``
        (its info), ``split``, ``shard``, ``timing_s`` and ``elapsed_s``.

    Raises
    ------
    LaplaceHeadError
        When the segmenter raised on every one of >= 2 images that reached it and nothing was
        produced - a systemic problem (e.g. out of GPU memory), not a bad sample. No summary
        is written then.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out_split_dir = Path(out_split_dir)
    run = _ShardRun(tracker, log_every, write_workers)
    records = _read_prompt_records(prompt_json_paths, sample_ids, run)
    n_promptsets = sum(len(r["promptsets"]) for r in records)
    label = " ".join(str(part) for part in (split, shard) if part is not None)
    bar = tqdm(total=n_promptsets, unit="promptset", desc=f"precompute {label}".strip())
    try:
        for record in [*records, None]:
            before = run.processed
            if record is None:
                run.collect()  # wait for the last writes
            else:
                _run_sample(record, out_split_dir, segmenter, sigma, run)
                run.collect(max_pending=_MAX_PENDING_WRITES)
            bar.update(run.processed - before)
            bar.set_postfix(run.counts, refresh=False)
            run.maybe_log()
    finally:
        bar.close()
        run.close()
    run.maybe_log(force=True)
    _raise_if_the_segmenter_always_failed(run)
    summary = {
        "split": split,
        "shard": shard,
        "n_samples": len(prompt_json_paths),
        "n_promptsets": n_promptsets,
        **run.counts,
        "samples_failed": run.samples_failed,
        "n_images_encoded": run.n_images_encoded,
        "failures": run.failures,
        "sigma": float(sigma),
        "segmenter": segmenter.info,
        "out_split_dir": str(out_split_dir),
        "timing_s": {key: round(value, 4) for key, value in run.timing.items()},
        "elapsed_s": round(time.perf_counter() - started, 4),
    }
    remove_stale_temp_files(Path(summary_path).parent, [Path(summary_path).name])
    atomic_write_json(summary_path, summary)
    LOGGER.info(
        "precompute %s: %d done, %d skipped, %d failed prompt sets; %d images encoded; "
        "%d failed samples",
        label or str(out_split_dir),
        run.counts["done"],
        run.counts["skipped"],
        run.counts["failed"],
        run.n_images_encoded,
        run.samples_failed,
    )
    return summary


def _read_prompt_records(
    prompt_json_paths: Sequence[str | os.PathLike],
    sample_ids: Sequence[str] | None,
    run: _ShardRun,
) -> list[dict[str, Any]]:
    """The readable stage-2 records; each unreadable JSON becomes a failed sample of ``run``."""
    records: list[dict[str, Any]] = []
    for index, path in enumerate(prompt_json_paths):
        try:
            records.append(_read_prompt_record(Path(path)))
        except LaplaceHeadError as exc:
            sample_id = sample_ids[index] if sample_ids is not None else None
            run.fail(sample_id, Path(path).stem, None, "prompt_json", str(exc))
            run.samples_failed += 1
    return records


def _raise_if_the_segmenter_always_failed(run: _ShardRun) -> None:
    """A systemic failure (every one of >= 2 images failed in the segmenter) stops the job."""
    if run.segmenter_failures >= 2 and run.segmenter_failures == run.samples_reaching_segmenter:
        first = next(f for f in run.failures if f["stage"] == "segmenter")
        raise LaplaceHeadError(
            f"the base segmenter failed on all {run.segmenter_failures} images it was given in "
            f"this shard; first error ({first['sample_id']}): {first['reason']}. Fix the cause "
            "(device, memory, checkpoint) and re-run; finished prompt sets are kept."
        )


def run_precompute(
    layout: ProjectLayout,
    splits: Sequence[str],
    shard: str | None,
    shard_size: int,
    sigma: float,
    segmenter_settings: Mapping[str, Any],
    wandb_config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Stage 3 for one shard (Snakemake job) or for all shards of some splits (stand-alone).

    The segmenter is built once, before the first shard, and reused. ``shard=None`` runs every
    shard of each split (the layout's split manifest sorted by sample_id, ``shard_size`` samples
    per shard). ``segmenter_settings`` are the keyword arguments of
    :func:`laplace_head.segmenters.build_segmenter_from_settings` (``backend`` and the keys that
    backend reads, plus ``device``).

    Returns
    -------
    list of dict
        One :func:`precompute_shard` summary per shard processed.
    """
    from laplace_head.segmenters import build_segmenter_from_settings
    from laplace_head.util.tracking import init_tracker

    segmenter = build_segmenter_from_settings(**segmenter_settings)
    name = "precompute_" + "_".join([*splits, *([shard] if shard is not None else [])])
    tracker = init_tracker(
        wandb_config or {"enabled": False},
        layout.root,
        job_type="precompute_sam",
        name=name,
        run_config={"splits": list(splits), "shard": shard, "sigma": sigma, **segmenter.info},
    )
    summaries = []
    try:
        for split in splits:
            frame = _read_split(layout, split)
            for shard_id in [shard] if shard is not None else shard_names(len(frame), shard_size):
                summaries.append(
                    _precompute_layout_shard(
                        layout, split, frame, shard_id, shard_size, segmenter, sigma, tracker
                    )
                )
        tracker.summary(
            {
                f"precompute/{key}": sum(s[key] for s in summaries)
                for key in ("done", "skipped", "failed")
            }
        )
    finally:
        tracker.finish()
    return summaries


def _read_split(layout: ProjectLayout, split: str):
    from laplace_head.dataset.manifests import read_split_manifest

    csv_path = layout.manifest(split)
    if not csv_path.is_file():
        raise LaplaceHeadError(
            f"split manifest {str(csv_path)!r} does not exist; run stage 1 (build_manifests) first."
        )
    return read_split_manifest(csv_path)


def _precompute_layout_shard(
    layout: ProjectLayout,
    split: str,
    frame,
    shard: str,
    shard_size: int,
    segmenter: BaseSegmenter,
    sigma: float,
    tracker: Any,
) -> dict[str, Any]:
    """:func:`precompute_shard` of one shard of ``split``, every path from the layout."""
    try:
        rows = shard_rows(frame, shard, shard_size)
    except ValueError as exc:
        raise LaplaceHeadError(f"{split}: {exc}") from exc
    return precompute_shard(
        [layout.promptset_json(split, s) for s in rows.safe_id],
        layout.precompute_dir(split),
        segmenter,
        sigma,
        layout.shard_summary("sam_precompute", split, shard),
        tracker=tracker,
        sample_ids=list(rows.sample_id),
        split=split,
        shard=shard_name(shard),
    )
