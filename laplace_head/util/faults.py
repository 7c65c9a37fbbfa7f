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

Recovery from such a kill (removing the ``.tmp-*`` debris of an interrupted write) is production
code and lives with the atomic writers, :func:`laplace_head.util.atomic.remove_stale_temp_files`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

LOGGER = logging.getLogger(__name__)

KILL_AT_ENV = "LAPLACE_HEAD_KILL_AT"
PAUSE_AT_ENV = "LAPLACE_HEAD_PAUSE_AT"
FAULT_POINTS = (
    "build_manifests",  # after each sample validated (stage 1, before any file is written)
    "generate_promptsets",  # after each prompt-set JSON written (stage 2)
    "precompute_sam",  # after each prompt set's four files written (stage 3)
    "build_training_index",  # after each sample indexed (stage 4, before the CSVs are written)
    "pack_hdf5",  # after each row copied into the temporary HDF5 file (stage 4.5)
    "annotate_save",  # the annotator's new mask PNG written, before it is renamed into place
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
