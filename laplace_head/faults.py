"""Fault injection for the reliability tests: kill or stop the running process at a named point.

Stages call :func:`fault_point` at meaningful moments (after each validated sample, after each
file written, ...). Nothing happens unless one of two environment variables names that point:

- ``LAPLACE_HEAD_KILL_AT="<name>:<n>"``: the process sends itself ``SIGKILL`` at the n-th call of
  ``fault_point(name)`` (a real, uncatchable kill: no ``finally``, no atexit, no flush).
- ``LAPLACE_HEAD_PAUSE_AT="<name>:<n>"``: the process stops itself with ``SIGSTOP`` at the n-th
  call, after logging ``fault injection: stopped pid <pid> at <name> call <n>``; send it
  ``SIGCONT`` to let it go on (used to hold a run in the middle of a job).

Several specifications may be given, separated by commas (``"pack_hdf5:3,precompute_sam:1"``).
Calls are counted per process and per name, so in a Snakemake run every job counts from 1. The
points in use are :data:`FAULT_POINTS`. With neither variable set a call costs two dictionary
look-ups.

The other side, recovery: :func:`remove_stale_temp_files` deletes the ``.tmp-*`` leftovers that
an atomic write killed mid-way leaves beside its final name (:mod:`laplace_head.io`); stages call
it for the files they are about to write, so a resumed run leaves no debris behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from laplace_head.io import TMP_PREFIX

LOGGER = logging.getLogger(__name__)

KILL_AT_ENV = "LAPLACE_HEAD_KILL_AT"
PAUSE_AT_ENV = "LAPLACE_HEAD_PAUSE_AT"
FAULT_POINTS = (
    "build_manifests",  # after each sample validated (stage 1, before any file is written)
    "generate_promptsets",  # after each prompt-set JSON written (stage 2)
    "precompute_sam",  # after each prompt set's four files written (stage 3)
    "build_training_index",  # after each sample indexed (stage 4, before the CSVs are written)
    "pack_hdf5",  # after each row copied into the temporary HDF5 file (stage 4.5)
)

_calls: dict[str, int] = {}


def parse_spec(spec: str) -> dict[str, int]:
    """``"name:n[,name:n...]"`` -> ``{name: n}``.

    Raises
    ------
    ValueError
        For a malformed entry (the message shows the expected form).
    """
    parsed: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, count = entry.rpartition(":")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"fault spec entry {entry!r} must look like '<name>:<n>' with n >= 1")
        parsed[name] = int(count)
    return parsed


def fault_point(name: str) -> None:
    """Count a call of point ``name``; kill or stop this process when the environment says so."""
    kill_spec = os.environ.get(KILL_AT_ENV)
    pause_spec = os.environ.get(PAUSE_AT_ENV)
    if not kill_spec and not pause_spec:
        return
    _calls[name] = count = _calls.get(name, 0) + 1
    if pause_spec and parse_spec(pause_spec).get(name) == count:
        LOGGER.warning("fault injection: stopped pid %d at %s call %d", os.getpid(), name, count)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
    if kill_spec and parse_spec(kill_spec).get(name) == count:
        os.kill(os.getpid(), signal.SIGKILL)


def reset_counts() -> None:
    """Forget the calls counted so far in this process (for tests calling stages in-process)."""
    _calls.clear()


def _temp_name_pattern(final_name: str) -> re.Pattern[str]:
    # laplace_head.io.atomic_path: mkstemp(prefix=".tmp-<name>.", suffix=<name's suffix>) adds 8
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
