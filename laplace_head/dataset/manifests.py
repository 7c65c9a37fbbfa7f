"""Stage 1: scan, validate and split the dataset into manifest CSVs.

Writes the layout's ``manifests/``: ``all_samples.csv`` (every candidate sample with ``valid`` and
``reason``), ``train.csv``/``val.csv``/``test.csv`` (valid samples, sorted by id),
``split_registry.csv`` (the frozen ``sample_id -> split`` assignment with the
``data.split_fractions`` that drew it, kept across re-runs; delete it with the manifests to
draw a fresh split) and ``manifest_report.json``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from laplace_head.dataset.checks import SampleCheck, check_sample
from laplace_head.dataset.scan import ScanEntry, escape_line_breaks, scan_dataset
from laplace_head.dataset.splits import SPLITS, SplitFractions, assign_splits
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import ProjectLayout
from laplace_head.util.atomic import atomic_write_json, atomic_write_text, remove_stale_temp_files
from laplace_head.util.faults import fault_point

LOGGER = logging.getLogger(__name__)
REGISTRY = "split_registry"  # the manifest that freezes every sample's split
# The registry's columns of the fractions that drew the split (the same value on every row).
FRACTION_COLUMNS = {"val": "val_fraction", "test": "test_fraction"}
MANIFEST_COLUMNS = [
    "sample_id",
    "safe_id",
    "class",
    "stem",
    "image_path",
    "mask_path",
    "image_h",
    "image_w",
    "mask_h",
    "mask_w",
    "size_mismatch",
    "valid",
    "reason",
    "split",
]


# Columns read back as text: ids, classes and stems like "007" must not become numbers.
TEXT_COLUMNS = ("sample_id", "safe_id", "class", "stem", "image_path", "mask_path", "reason")


def write_manifest_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a manifest CSV atomically so that every row reads back exactly as written.

    Every text field is quoted (``csv.QUOTE_NONNUMERIC``): the csv writer quotes a field only
    for the delimiter, the quote and the characters of the line terminator (``\\n``), so an
    unquoted carriage return, or any other character a reader treats as a line end, would split
    a row in :func:`read_split_manifest`. Numbers and booleans stay bare, so column types
    read back unchanged.
    """
    text = frame.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    atomic_write_text(path, text)


def read_split_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """A manifest CSV written by :func:`build_manifests`, with its text columns kept as text.

    Raises
    ------
    LaplaceHeadError
        When the file does not exist (stage 1 has not run).
    """
    path = Path(path)
    if not path.is_file():
        raise LaplaceHeadError(
            f"split manifest {str(path)!r} does not exist; run stage 1 (build_manifests) first."
        )
    return pd.read_csv(path, keep_default_na=False, dtype=dict.fromkeys(TEXT_COLUMNS, str))


def _check_all(entries: list[ScanEntry], workers: int) -> list[SampleCheck]:
    if workers <= 1 or len(entries) < 64:
        return _collect(map(check_sample, entries), len(entries))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return _collect(pool.map(check_sample, entries, chunksize=16), len(entries))


def _collect(results: Iterator[SampleCheck], total: int) -> list[SampleCheck]:
    collected = []
    for result in tqdm(results, total=total, desc="validate", unit="sample"):
        collected.append(result)
        fault_point("build_manifests")
    return collected


def read_frozen_assignment(layout: ProjectLayout) -> dict[str, str]:
    """The existing ``sample_id -> split`` assignment (registry, else split CSVs), or ``{}``."""
    registry = layout.manifest(REGISTRY)
    if registry.is_file():
        frame = pd.read_csv(registry, dtype=str, keep_default_na=False)
        return dict(zip(frame["sample_id"], frame["split"]))
    assignment: dict[str, str] = {}
    for split in SPLITS:
        path = layout.manifest(split)
        if path.is_file():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            assignment.update(dict.fromkeys(frame["sample_id"], split))
    return assignment


def read_frozen_fractions(layout: ProjectLayout) -> SplitFractions:
    """The split fractions of the frozen assignment: the registry's fraction columns; a
    registry without them, or split CSVs without a registry, hold a split drawn with
    :meth:`SplitFractions.default` (80/10/10)."""
    registry = layout.manifest(REGISTRY)
    if registry.is_file():
        frame = pd.read_csv(registry, keep_default_na=False, dtype={"sample_id": str})
        if set(FRACTION_COLUMNS.values()) <= set(frame.columns) and len(frame):
            return SplitFractions(
                **{name: float(frame[column].iloc[0]) for name, column in FRACTION_COLUMNS.items()}
            )
    return SplitFractions.default()


def check_frozen_fractions(layout: ProjectLayout, fractions: SplitFractions) -> None:
    """Raise when the project's frozen split was drawn with other fractions than ``fractions``
    (a re-split would move samples between train and test; stage 1 never does it silently)."""
    frozen = read_frozen_fractions(layout)
    if frozen.matches(fractions):
        return
    registry = layout.manifest(REGISTRY)
    raise LaplaceHeadError(
        f"the frozen split of this project ({registry}) was drawn with data.split_fractions "
        f"[val, test] = {frozen.describe()}, but the config asks for {fractions.describe()}. Set "
        f"data.split_fractions back to {frozen.describe()}, or delete {layout.manifests_dir} "
        "(every manifest, so that stage 1 draws a fresh split and every later stage reruns), "
        "or use another data.project_root."
    )


def build_manifests(
    images_root: str | os.PathLike,
    masks_root: str | os.PathLike,
    layout: ProjectLayout,
    split_seed: int,
    workers: int = 1,
    fractions: SplitFractions | None = None,
) -> dict:
    """Run stage 1 into the layout's manifests and return a report (counts, per-class table,
    invalid and dropped samples).

    ``fractions`` (default :meth:`SplitFractions.default`) are the val and test shares of a
    fresh split; a project whose frozen split was drawn with other ones is refused
    (:func:`check_frozen_fractions`) before anything is scanned or written.
    """
    fractions = SplitFractions.default() if fractions is None else fractions
    frozen = read_frozen_assignment(layout)
    if frozen:
        check_frozen_fractions(layout, fractions)
    outputs = [layout.manifest(name) for name in ("all_samples", *SPLITS, REGISTRY)]
    outputs.append(layout.manifest_report)
    remove_stale_temp_files(layout.manifests_dir, [path.name for path in outputs])
    entries = scan_dataset(Path(images_root).resolve(), Path(masks_root).resolve())
    LOGGER.info("scanned %d candidate samples under %s", len(entries), images_root)
    results = _check_all(entries, workers)
    frame = pd.DataFrame(
        [
            {
                "sample_id": e.sample_id,
                "safe_id": e.safe_id,
                "class": e.class_name,
                "stem": e.stem,
                "image_path": e.image_path,
                "mask_path": e.mask_path,
                **{k: v for k, v in asdict(r).items() if k != "reason"},
                "valid": r.valid,
                "reason": r.reason,
            }
            for e, r in zip(entries, results)
        ],
        columns=[c for c in MANIFEST_COLUMNS if c != "split"],
    )
    # An empty scan gives object columns; boolean masks must stay boolean (empty images_root).
    frame = frame.astype({"valid": bool, "size_mismatch": bool})
    valid = frame[frame["valid"]]
    assignment, dropped = assign_splits(
        valid.groupby("class")["sample_id"].apply(list).to_dict(), split_seed, frozen, fractions
    )
    # Only valid rows carry a split (an invalid row may share the id of a valid one).
    frame["split"] = frame["sample_id"].map(assignment).where(frame["valid"]).fillna("")
    frame = frame.sort_values(["sample_id", "image_path"], kind="mergesort")
    write_manifest_csv(layout.manifest("all_samples"), frame[MANIFEST_COLUMNS])
    for split in SPLITS:
        rows = frame[frame["valid"] & (frame["split"] == split)]
        write_manifest_csv(layout.manifest(split), rows[MANIFEST_COLUMNS])
    registry = pd.DataFrame(sorted(assignment.items()), columns=["sample_id", "split"])
    for name, column in FRACTION_COLUMNS.items():
        registry[column] = getattr(fractions, name)
    write_manifest_csv(layout.manifest(REGISTRY), registry)
    report = _report(frame, frozen, dropped)
    atomic_write_json(layout.manifest_report, report)
    _log_report(report)
    return report


def _report(frame: pd.DataFrame, frozen: dict[str, str], dropped: list[str]) -> dict:
    valid = frame[frame["valid"]]
    per_class = (
        frame.assign(invalid=~frame["valid"])
        .groupby("class")
        .agg(valid=("valid", "sum"), invalid=("invalid", "sum"))
        .join(pd.crosstab(valid["class"], valid["split"]).reindex(columns=list(SPLITS)))
        .fillna(0)
        .astype(int)
        .reset_index()
    )
    invalid = frame[~frame["valid"]][["sample_id", "image_path", "mask_path", "reason"]]
    return {
        "n_candidates": int(len(frame)),
        "n_valid": int(len(valid)),
        "n_invalid": int(len(invalid)),
        "n_size_mismatch": int(valid["size_mismatch"].sum()),
        "split_sizes": {s: int((valid["split"] == s).sum()) for s in SPLITS},
        "frozen_from_previous_run": int(sum(sid in frozen for sid in valid["sample_id"])),
        "newly_assigned": int(sum(sid not in frozen for sid in valid["sample_id"])),
        "dropped_since_previous_run": dropped,
        "per_class": per_class.to_dict(orient="records"),
        "invalid_samples": invalid.to_dict(orient="records"),
    }


def _log_report(report: dict) -> None:
    if report["n_valid"] == 0:
        LOGGER.warning(
            "no valid samples (%d candidates): the split manifests are empty and stage 2 has "
            "nothing to do; check data.images_root / data.masks_root and the reasons in "
            "all_samples.csv",
            report["n_candidates"],
        )
    LOGGER.info(
        "valid %d, invalid %d (%d valid with mask/image size mismatch)",
        report["n_valid"],
        report["n_invalid"],
        report["n_size_mismatch"],
    )
    LOGGER.info(
        "split sizes: %s (kept from previous run: %d, newly assigned: %d)",
        report["split_sizes"],
        report["frozen_from_previous_run"],
        report["newly_assigned"],
    )
    if report["dropped_since_previous_run"]:
        LOGGER.warning(
            "dropped %d previously assigned samples that are no longer valid: %s",
            len(report["dropped_since_previous_run"]),
            report["dropped_since_previous_run"],
        )
    LOGGER.info("per class:\n%s", pd.DataFrame(report["per_class"]).to_string(index=False))
    if report["invalid_samples"]:
        table = pd.DataFrame(report["invalid_samples"])[["sample_id", "reason"]]
        table["sample_id"] = table["sample_id"].map(escape_line_breaks)  # one line per sample
        LOGGER.warning("invalid samples:\n%s", table.to_string(index=False))
