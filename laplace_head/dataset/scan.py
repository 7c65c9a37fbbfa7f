"""Pair images with masks in the nested layout and assign sample ids.

Layout::

    images_root/<class>/<stem>.{jpg,jpeg,png}    (extension case-insensitive)
    masks_root/<class>/<stem>.{npy,png}

Every file that looks like an image or a mask yields an entry; pairing problems are recorded as
a ``reason`` rather than dropped, so nothing vanishes silently. So are names no later stage can
use: a control character or line separator in a class or stem (it would split a line of a CSV,
log or report), a ``safe_id`` longer than :data:`MAX_SAFE_ID_BYTES` (the files named after it
would exceed the file-name limit) and names that are not valid UTF-8.
"""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from laplace_head.errors import LaplaceHeadError

LOGGER = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS = (".npy", ".png")
SAFE_SEPARATOR = "__"

# Characters that end or split a line for some reader (csv/pandas, ``str.splitlines``, terminals,
# log viewers): every C0/C1 control (Unicode category Cc: NUL, TAB, CR, LF, VT, FF, ESC, the
# file/group/record separators, DEL, NEL, ...) and the Unicode line/paragraph separators
# U+2028/U+2029 (categories Zl, Zp). A class or stem containing one is rejected with a reason.
LINE_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

# Longest file name the usual file systems allow (NAME_MAX: ext4, xfs, btrfs, ZFS, APFS), bytes.
NAME_MAX_BYTES = 255
# Longest file name derived from a safe_id: the sanity panel ``<split>__<safe_id>__promptset_NNNN
# .png`` of evaluation/sanity_panels.py (longest split "train", 4-digit promptset ids, i.e. up to
# 10000 prompt sets per sample), and while it is written it carries util.atomic.atomic_path's
# temporary name ``.tmp-<name>.XXXXXXXX.png``. Every other derived name is shorter (the stage-2
# JSON ``.tmp-<safe_id>.json.XXXXXXXX.json`` needs 24 bytes, the stage-3 folder <safe_id> none).
_LONGEST_DERIVED_NAME = ".tmp-" + "train__{safe_id}__promptset_0000.png" + ".XXXXXXXX.png"
# Decision: a longer safe_id is REJECTED at scan time with a reason (rename the file or class),
# not shortened with a hash: output names keep saying which input they come from.
# 255 - 45 = 210 bytes of UTF-8 (tests/unit/test_dataset_scan.py writes both derived names).
MAX_SAFE_ID_BYTES = NAME_MAX_BYTES - len(_LONGEST_DERIVED_NAME.format(safe_id="").encode())


class ScanError(LaplaceHeadError):
    """The two data roots cannot be scanned as given; the message says why and the fix."""


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


def is_line_breaking(char: str) -> bool:
    """Whether ``char`` is a control character or a line/paragraph separator."""
    return unicodedata.category(char) in LINE_BREAKING_CATEGORIES


def escape_line_breaks(text: str) -> str:
    """``text`` with every control character / line separator written as its escape (``\\r``),
    so that it fits on one line of a CSV, a log or a report."""
    if not any(is_line_breaking(char) for char in text):
        return text
    return "".join(repr(c)[1:-1] if is_line_breaking(c) else c for c in text)


def name_problem(name: str) -> str:
    """Why a class or stem ``name`` cannot be used, or ``""`` when it can.

    The problems detected here are an empty name (a file named only ``.png``) and a control
    character or line separator (see :data:`LINE_BREAKING_CATEGORIES`); the text names the
    first one readably.
    """
    if not name:
        return "is empty (the file name is only an extension)"
    for position, char in enumerate(name):
        if is_line_breaking(char):
            return (
                f"contains a control character or line separator ({char!r}, "
                f"U+{ord(char):04X}, at position {position} of {name!r})"
            )
    return ""


def safe_id_problem(safe_id: object) -> str:
    """Why ``safe_id`` cannot name the files of later stages, or ``""`` when it can.

    The one name rule: stage 1 flags every sample it refuses (:func:`scan_dataset`), and
    stages 2 and 3 check the ``safe_id`` they are handed with it.

    A usable safe id is one plain, non-empty path component (no ``/``, not ``.``/``..``), free
    of control characters and at most :data:`MAX_SAFE_ID_BYTES` bytes long in UTF-8.
    """
    if not isinstance(safe_id, str) or safe_id in ("", ".", ".."):
        return "is not a file name"
    if "/" in safe_id or os.sep in safe_id:
        return "contains a path separator"
    problem = name_problem(safe_id)
    if problem:
        return problem
    try:
        size = len(safe_id.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_SAFE_ID_BYTES:
        return (
            f"is {size} bytes long (limit {MAX_SAFE_ID_BYTES} bytes, so that the file names "
            f"derived from it fit the {NAME_MAX_BYTES}-byte file-name limit)"
        )
    return ""


def same_roots_problem(images_root: str | os.PathLike, masks_root: str | os.PathLike) -> str:
    """Why ``images_root`` and ``masks_root`` cannot be scanned together, or ``""``.

    One folder as both roots is refused: a ``.png`` there is at once an image and a mask, so
    every PNG image would pair with itself as its own mask (and a PNG mask would count as an
    image), and which file is which cannot be told from the names.
    """
    try:
        same = os.path.samefile(images_root, masks_root)
    except OSError:  # a missing root is no pair of the same folder
        return ""
    if not same:
        return ""
    return (
        f"data.images_root ({str(images_root)!r}) and data.masks_root ({str(masks_root)!r}) "
        "are the same folder: every .png image there would count as its own mask. Keep masks "
        "in their own tree (masks_root/<class>/<stem>.png or .npy) and set data.masks_root to it"
    )


# Why a path named like an image or mask is no usable file (``_list_files``), by st_mode kind.
NOT_REGULAR = "not a regular file (broken symlink, symlink loop or folder)"
NOT_REGULAR_SPECIAL = "not a regular file (FIFO, device or socket)"


def _not_regular_reason(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return NOT_REGULAR  # a broken link or a loop
    if stat.S_ISDIR(mode):
        return NOT_REGULAR
    return NOT_REGULAR_SPECIAL


def _list_files(
    folder: Path, extensions: tuple[str, ...]
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Map stem -> paths for the regular files with ``extensions``, and stem -> paths for the
    entries named so that are no usable file (a folder, FIFO, device, broken link, loop)."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    unusable: dict[str, list[Path]] = defaultdict(list)
    if not folder.is_dir():
        return by_stem, unusable
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.lower() in extensions:  # ".png": Path's suffix is "", the stem is empty
            stem = ""
        elif path.suffix.lower() in extensions:
            stem = path.stem
        else:
            continue
        try:
            is_file = entry.is_file(follow_symlinks=True)
            if is_file:
                os.stat(path)
        except OSError:
            is_file = False
        if is_file:
            by_stem[stem].append(path)
        else:
            unusable[stem].append(path)
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
    ``two masks share the stem``, ``not a regular file (...)`` (a folder, FIFO, device, broken
    link or loop named like an image or mask: one entry with its counterpart, not two),
    ``safe id collides``, ``class/stem name contains a control character or line separator``,
    ``name too long``, ``file or folder name is not valid UTF-8`` and anything else
    :func:`safe_id_problem` (the name rule of every later stage) refuses. Such entries keep
    their real names.

    Raises
    ------
    ScanError
        When both roots are one folder (:func:`same_roots_problem`).
    """
    images_root, masks_root = Path(images_root), Path(masks_root)
    problem = same_roots_problem(images_root, masks_root)
    if problem:
        raise ScanError(problem)
    entries: list[ScanEntry] = []
    for class_name in sorted(set(_class_folders(images_root)) | set(_class_folders(masks_root))):
        images, bad_images = _list_files(images_root / class_name, IMAGE_EXTENSIONS)
        masks, bad_masks = _list_files(masks_root / class_name, MASK_EXTENSIONS)
        for stem in sorted(set(images) | set(masks) | set(bad_images) | set(bad_masks)):
            entries.append(
                _pair(
                    class_name,
                    stem,
                    images.get(stem, []),
                    masks.get(stem, []),
                    bad_images.get(stem, []),
                    bad_masks.get(stem, []),
                )
            )
    _flag_unusable_names(entries)
    _flag_safe_id_collisions(entries)
    _flag_undecodable_names(entries)
    entries = _one_entry_per_id(entries)
    return sorted(entries, key=lambda e: (e.sample_id, e.image_path, e.mask_path))


def _pair(
    class_name: str,
    stem: str,
    images: list[Path],
    masks: list[Path],
    bad_images: list[Path],
    bad_masks: list[Path],
) -> ScanEntry:
    """The one entry of ``<class>/<stem>``, with its pairing problems as the reason.

    Files named like an image or mask that are no usable file (``bad_images``, ``bad_masks``)
    belong to the same entry, listed as its image or mask; then the reason is only that (the
    file to fix first; pairing problems may vanish with it).
    """
    reasons = []
    unusable = sorted(bad_images + bad_masks, key=lambda p: p.name)
    all_images = bad_images + images
    all_masks = bad_masks + masks
    if unusable:  # the one reason: the other problems may vanish with that file
        kinds = sorted({_not_regular_reason(p) for p in unusable})
        reason = " and ".join(kinds)
        if len(images) + len(masks) + len(unusable) > 2 or len(kinds) > 1:
            reason += ": " + ", ".join(p.name for p in unusable)
        reasons.append(reason)
    else:
        if len(images) > 1:
            reasons.append("two images share the stem: " + ", ".join(p.name for p in images))
        if len(masks) > 1:
            reasons.append("two masks share the stem: " + ", ".join(p.name for p in masks))
        if not images:
            reasons.append("mask without image")
        elif not masks:
            reasons.append("mask missing")
        elif _same_file(images[0], masks[0]):
            reasons.append(
                f"the image is its own mask ({images[0]} and {masks[0]} are one file, through "
                "a link); put the real mask under data.masks_root"
            )
    return ScanEntry(
        sample_id=make_sample_id(class_name, stem),
        safe_id=make_safe_id(class_name, stem),
        class_name=class_name,
        stem=stem,
        image_path=str(all_images[0]) if all_images else "",
        mask_path=str(all_masks[0]) if all_masks else "",
        reason="; ".join(reasons),
    )


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _flag_unusable_names(entries: list[ScanEntry]) -> None:
    """Reject names with a control character / line separator, over-long safe ids and any
    other name :func:`safe_id_problem` refuses: stages 2 and 3 apply that rule, so a sample
    that passes here is never refused for its name later.

    The entry keeps its real names (the manifest CSVs quote them, so they round-trip); the
    reason shows them escaped. Earlier pairing reasons are kept after the name's reason.
    """
    for entry in entries:
        reasons = []
        for where, name in (("class", entry.class_name), ("stem", entry.stem)):
            problem = name_problem(name)
            if problem:
                reasons.append(f"{where} name {problem}; rename it")
        if not reasons:
            try:
                size = len(entry.safe_id.encode("utf-8"))
            except UnicodeEncodeError:  # reported by _flag_undecodable_names
                continue
            if size > MAX_SAFE_ID_BYTES:
                shown = entry.safe_id if len(entry.safe_id) <= 60 else entry.safe_id[:57] + "..."
                reasons.append(
                    f"name too long: safe id {shown!r} (<class>__<stem>) is {size} bytes, "
                    f"limit {MAX_SAFE_ID_BYTES} bytes so that the files named after it fit the "
                    f"{NAME_MAX_BYTES}-byte file-name limit; shorten the class folder or file name"
                )
            problem = "" if reasons else safe_id_problem(entry.safe_id)
            if problem:  # whatever else the later stages' rule refuses
                reasons.append(f"safe id {entry.safe_id!r} {problem}; rename the file or class")
        if reasons:
            entry.reason = "; ".join(reasons + ([entry.reason] if entry.reason else []))


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


def _one_entry_per_id(entries: list[ScanEntry]) -> list[ScanEntry]:
    """Merge entries that show the same sample id into one invalid entry.

    Only escaping can make two ids equal: a name that is not UTF-8 (``a\\xff`` as a byte) is
    shown as the text a real name may have (``a\\xff`` with a backslash). One id keeps one row
    in the manifests; its reason names every file involved.
    """
    groups: dict[str, list[ScanEntry]] = defaultdict(list)
    for entry in entries:
        groups[entry.sample_id].append(entry)
    merged = []
    for sample_id, group in groups.items():
        first = group[0]
        if len(group) > 1:
            reasons = list(dict.fromkeys(e.reason for e in group if e.reason))
            first.reason = "; ".join(
                [
                    *reasons,
                    f"{len(group)} different image/mask pairs are shown as {sample_id!r} (a "
                    "name that is not UTF-8, escaped, reads as another real name); rename them "
                    "apart",
                ]
            )
        merged.append(first)
    return merged
