"""One run at a time on a project folder: the lock file that names its holder.

Snakemake's own lock (``.snakemake/locks``) lives in the working directory, so two checkouts
running on one ``data.project_root`` never see each other. :class:`ProjectLock` is a file in
the project folder (:meth:`~laplace_head.layout.ProjectLayout.lock`), created exclusively, that
holds its holder as JSON: ``pid``, ``host``, ``started`` (UTC, ISO 8601), ``cwd`` and
``command``. A workflow takes it in its ``onstart:`` handler (the main ``snakemake`` process
only: a dry-run runs no handler and jobs run with ``--no-hooks``) and gives it back in
``onsuccess:`` / ``onerror:``; a stand-alone stage command (``python -m laplace_head ...``)
holds it while it runs.

A lock whose process is gone on this host (a kill, a power cut) is broken with a warning when
the next run starts. A lock from another host cannot be checked from here:
``python -m laplace_head unlock --config FILE`` removes it once that run is known to be over.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from laplace_head.errors import LaplaceHeadError

LOGGER = logging.getLogger(__name__)
UNLOCK_COMMAND = "python -m laplace_head unlock --config FILE"


class ProjectLockedError(LaplaceHeadError):
    """Another run holds the project folder's lock."""


def _this_holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
        "command": " ".join(sys.argv)[:500],
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    """A holder in words."""
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
        f" in {holder.get('cwd')} ({holder.get('command')})"
    )


class ProjectLock:
    """The lock file at ``path`` (a project's :meth:`~laplace_head.layout.ProjectLayout.lock`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (None when nobody does; ``{}`` when the file is unreadable)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return {}
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _is_mine(self, holder: dict[str, Any] | None) -> bool:
        return bool(holder) and (holder.get("pid"), holder.get("host")) == (
            os.getpid(),
            socket.gethostname(),
        )

    def is_stale(self, holder: dict[str, Any]) -> bool:
        """Held by a process that is gone on this host."""
        pid = holder.get("pid")
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and not isinstance(pid, bool)
            and pid > 0
            and not _pid_alive(pid)
        )

    def acquire(self) -> None:
        """Take the lock (a no-op when this process holds it already).

        Raises
        ------
        ProjectLockedError
            A live run (or one on another host) holds it; the message names it and the fix.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock broken, then a race lost, at most
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if self._is_mine(holder):
                    return
                if holder and self.is_stale(holder):
                    LOGGER.warning(
                        "%s: breaking the lock of a run that is gone (%s)",
                        self.path,
                        describe(holder),
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise ProjectLockedError(self._locked_message(holder)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(_this_holder(), handle, sort_keys=True)
                handle.write("\n")
            return
        raise ProjectLockedError(self._locked_message(self.holder() or {}))

    def _locked_message(self, holder: dict[str, Any]) -> str:
        who = describe(holder) if holder else "a holder this file does not name (unreadable)"
        return (
            f"another run works on this project folder: {self.path} is held by {who}. Wait "
            f"for it to finish, or, if it is no longer running (a run on another host, or a "
            f"lock file copied with the folder), remove the lock with `{UNLOCK_COMMAND}`."
        )

    def release(self) -> None:
        """Give the lock back if this process holds it (another holder's lock is left)."""
        if self._is_mine(self.holder()):
            self.path.unlink(missing_ok=True)

    def break_lock(self, force: bool = False) -> dict[str, Any] | None:
        """Remove the lock whoever holds it; the holder it named (None: there was none).

        Raises
        ------
        ProjectLockedError
            The holder is alive on this host and ``force`` is not set.
        """
        holder = self.holder()
        if holder is None:
            return None
        pid = holder.get("pid")
        alive = (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and pid > 0
            and _pid_alive(pid)
        )
        if alive and not force:
            raise ProjectLockedError(
                f"{self.path} is held by {describe(holder)}, which is still running on this "
                "host; stop it first (or pass --force if that process is not the run)."
            )
        self.path.unlink(missing_ok=True)
        return holder
