"""Atomic file writes, cleanup after interrupted writes, and small JSON/YAML/NumPy readers.

Every file the workflow produces goes through these writers: the bytes land in a temporary
file in the destination folder, are flushed and fsynced, then renamed over the final name, and
the folder is fsynced so that the rename itself survives a power loss. A crash therefore leaves
either the old file, no file, or a ``.tmp-*`` leftover - never a file that looks complete but is
truncated; :func:`remove_stale_temp_files` clears such leftovers when a stage runs again.

An fsync error (EIO: the disk did not store the bytes) is raised, never swallowed: the temporary
file is removed and the final name keeps its previous content (or stays absent).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

LOGGER = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Use this for writers that insist on a file name (h5py, torch.save, savefig). The temporary
    name keeps the final suffix (e.g. ``.png``) so libraries that infer a format still work.
    """
    path = Path(path)
    created = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=TMP_PREFIX + path.name + ".", suffix=suffix or path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give outputs the usual permissions (0666 minus the umask).
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # The rename is durable only once the folder's entry list is on disk; folders this write
    # created are entries of their own parents.
    fsync_folder(path.parent)
    for folder in created:
        fsync_folder(folder.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet (``mkdir(parents=True)`` creates them)."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s bytes to the disk; an error (EIO, ENOSPC ...) propagates."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


# fsync of a folder on a system or file system that cannot sync folders at all (as PostgreSQL's
# fsync_fname does, EBADF and EINVAL are then ignored; some FUSE mounts say ENOTSUP): not a lost
# write, so not an error. Every other errno - EIO above all - is.
_FOLDER_SYNC_UNSUPPORTED = frozenset(
    code for name in ("EBADF", "EINVAL", "ENOTSUP") if (code := getattr(errno, name, None))
)


def fsync_folder(folder: Path) -> None:
    """fsync ``folder`` so that a rename into it is durable.

    Skipped where a folder cannot be opened (Windows: ``os.open`` on a folder fails; NTFS makes
    renames durable itself) and where the system does not support syncing a folder
    (EBADF/EINVAL/ENOTSUP). Any other fsync error - EIO above all - propagates.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        LOGGER.debug("cannot open folder %s to fsync it (%s); skipped", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FOLDER_SYNC_UNSUPPORTED:
            raise
        LOGGER.debug("the file system of %s cannot fsync a folder (%s)", folder, exc)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys, two-space indent, trailing newline (byte-stable)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as canonical JSON, atomically."""
    atomic_write_text(path, json_dumps(obj))


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as block-style YAML (key order kept), atomically."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` in ``.npy`` format atomically (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with ``yaml.safe_load``."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_head_tail_md5(path: str | os.PathLike, span: int = 1 << 20) -> str:
    """MD5 hex digest of a file's first and last ``span`` bytes (the whole file when it is at
    most ``2 * span`` long): a cheap identity for a multi-GB file that reads 2 MiB, not all
    of it. It does not see a change in the middle; pair it with the file size."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(span))
        if size > span:
            handle.seek(max(span, size - span))
            digest.update(handle.read(span))
    return digest.hexdigest()


def load_npy_safe(path: str | os.PathLike) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling objects (``allow_pickle=False``)."""
    return np.load(path, allow_pickle=False)


def _temp_name_pattern(final_name: str) -> re.Pattern[str]:
    # atomic_path: mkstemp(prefix=".tmp-<name>.", suffix=<name's suffix>) adds 8
    # characters of [a-z0-9_]; matching exactly never touches another final name's temp file.
    suffix = Path(final_name).suffix
    return re.compile(
        rf"{re.escape(TMP_PREFIX + final_name)}\.[a-z0-9_]{{8}}{re.escape(suffix)}", re.ASCII
    )


def remove_stale_temp_files(
    folder: str | os.PathLike, final_names: Iterable[str] | None = None
) -> list[Path]:
    """Delete leftovers of interrupted atomic writes in ``folder`` (not recursive).

    Parameters
    ----------
    folder
        Folder to clean; a missing folder is fine.
    final_names
        Only the temporary files of these final names (``.tmp-<name>.XXXXXXXX<suffix>``) are
        removed, so a job may clean a folder it shares with jobs writing other names. ``None``
        removes every ``.tmp-*`` file (for folders one job owns).

    Call it only for names no other running process writes: Snakemake gives every output one
    job and its lock keeps a second run out.

    Returns
    -------
    list of Path
        The files removed.
    """
    folder = Path(folder)
    patterns = None if final_names is None else [_temp_name_pattern(n) for n in final_names]
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(folder) as entries:
            candidates = [e.name for e in entries if e.name.startswith(TMP_PREFIX)]
        for name in candidates:
            if patterns is None or any(p.fullmatch(name) for p in patterns):
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
                    removed.append(folder / name)
    if removed:
        LOGGER.warning(
            "removed %d leftover temporary file(s) of an interrupted write in %s",
            len(removed),
            folder,
        )
    return removed
