"""Pair images with masks in the nested layout and assign sample ids.

Layout::

    images_root/<class>/<stem>.{jpg,jpeg,png}    (extension case-insensitive)
    masks_root/<class>/<stem>.{npy,png}

Every file that looks like an image or a mask yields an entry; pairing problems are recorded as
a ``reason`` rather than dropped, so nothing vanishes silently.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS = (".npy", ".png")
SAFE_SEPARATOR = "__"


@dataclass
class ScanEntry:
    """One candidate sample found on disk.

    ``reason`` is empty when the pairing is fine; validation may still reject the sample.
    """

    sample_id: str
    safe_id: str
    class_name: str
    stem: str
    image_path: str
    mask_path: str
    reason: str = ""


def make_sample_id(class_name: str, stem: str) -> str:
    """Canonical id ``<class>/<stem>`` used in CSVs and metadata."""
    return f"{class_name}/{stem}"


def make_safe_id(class_name: str, stem: str) -> str:
    """Directory-safe id ``<class>__<stem>``."""
    return f"{class_name}{SAFE_SEPARATOR}{stem}"


def _list_files(folder: Path, extensions: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Map stem -> paths for files with ``extensions``; also return unusable entries."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    unusable: list[str] = []
    if not folder.is_dir():
        return by_stem, unusable
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if path.suffix.lower() not in extensions:
            continue
        try:
            is_file = entry.is_file(follow_symlinks=True)
            if is_file:
                os.stat(path)
        except OSError:
            is_file = False
        if is_file:
            by_stem[path.stem].append(path)
        else:
            unusable.append(str(path))
    return by_stem, unusable


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    folders = []
    for entry in os.scandir(root):
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as exc:  # e.g. a symlink loop: not a class folder, but say so
            LOGGER.warning("ignoring %s: not a usable class folder (%s)", entry.path, exc)
            continue
        if is_dir:
            folders.append(entry.name)
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS + MASK_EXTENSIONS:
            LOGGER.warning(
                "ignoring %s: files must be inside a class folder (%s/<class>/<stem>)",
                entry.path,
                root,
            )
    return sorted(folders)


def scan_dataset(images_root: str | os.PathLike, masks_root: str | os.PathLike) -> list[ScanEntry]:
    """Find every image/mask pair under the two roots.

    Returns entries sorted by sample id. Entries with a non-empty ``reason`` are invalid:
    ``mask missing``, ``mask without image``, ``two images share the stem``,
    ``two masks share the stem``, ``not a regular file``, ``safe id collides``.
    """
    images_root, masks_root = Path(images_root), Path(masks_root)
    entries: list[ScanEntry] = []
    for class_name in sorted(set(_class_folders(images_root)) | set(_class_folders(masks_root))):
        images, bad_images = _list_files(images_root / class_name, IMAGE_EXTENSIONS)
        masks, bad_masks = _list_files(masks_root / class_name, MASK_EXTENSIONS)
        for bad in bad_images + bad_masks:
            stem = Path(bad).stem
            entries.append(
                ScanEntry(
                    sample_id=make_sample_id(class_name, stem),
                    safe_id=make_safe_id(class_name, stem),
                    class_name=class_name,
                    stem=stem,
                    image_path=bad if bad in bad_images else "",
                    mask_path=bad if bad in bad_masks else "",
                    reason="not a regular file (broken symlink, symlink loop or folder)",
                )
            )
        for stem in sorted(set(images) | set(masks)):
            entries.append(_pair(class_name, stem, images.get(stem, []), masks.get(stem, [])))
    _flag_safe_id_collisions(entries)
    _flag_undecodable_names(entries)
    return sorted(entries, key=lambda e: (e.sample_id, e.image_path, e.mask_path))


def _pair(class_name: str, stem: str, images: list[Path], masks: list[Path]) -> ScanEntry:
    reasons = []
    if len(images) > 1:
        reasons.append("two images share the stem: " + ", ".join(p.name for p in images))
    if len(masks) > 1:
        reasons.append("two masks share the stem: " + ", ".join(p.name for p in masks))
    if not images:
        reasons.append("mask without image")
    elif not masks:
        reasons.append("mask missing")
    return ScanEntry(
        sample_id=make_sample_id(class_name, stem),
        safe_id=make_safe_id(class_name, stem),
        class_name=class_name,
        stem=stem,
        image_path=str(images[0]) if images else "",
        mask_path=str(masks[0]) if masks else "",
        reason="; ".join(reasons),
    )


def _flag_safe_id_collisions(entries: list[ScanEntry]) -> None:
    seen: dict[str, list[ScanEntry]] = defaultdict(list)
    for entry in entries:
        seen[entry.safe_id].append(entry)
    for safe_id, group in seen.items():
        ids = {e.sample_id for e in group}
        if len(ids) > 1:
            for entry in group:
                entry.reason = entry.reason or (
                    f"safe id {safe_id!r} collides with {sorted(ids - {entry.sample_id})}"
                )


def _flag_undecodable_names(entries: list[ScanEntry]) -> None:
    """Mark entries whose file or folder name is not valid UTF-8 (they cannot go in a CSV).

    The names are kept readable with backslash escapes (``bad\\xff.jpg``) so the manifest still
    shows which file to rename.
    """
    for entry in entries:
        fields = ("sample_id", "safe_id", "class_name", "stem", "image_path", "mask_path")
        values = [getattr(entry, name) for name in fields]
        try:
            for value in values:
                value.encode("utf-8")
        except UnicodeEncodeError:
            for name, value in zip(fields, values):
                raw = value.encode("utf-8", "surrogateescape")
                setattr(entry, name, raw.decode("utf-8", "backslashreplace"))
            entry.reason = "file or folder name is not valid UTF-8; rename it"
