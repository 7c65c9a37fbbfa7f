"""What every workflow script shares: logging to the rule's log file and clean user errors."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from laplace_head.errors import LaplaceHeadError

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _LogFileHandler(logging.FileHandler):
    """A log file that cannot grow (disk full) drops the record instead of printing logging's
    own traceback over the real error; every record still reaches stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``; created, appended)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_LogFileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)


# OSErrors that describe the machine, not a bug: reported like user errors, with the fix.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space (disk quota exceeded)",
    errno.EROFS: "make the output location writable",
    errno.EACCES: "fix the permissions",
}
RESUME_HINT = (
    "and run the same command again: finished outputs are kept and every file is written "
    "atomically, so nothing half-written is left under a final name."
)


def run_user_facing(func: Callable[[], T]) -> T:
    """Call ``func``; on a :class:`LaplaceHeadError` log its message (no traceback) and exit 1.

    A full disk, a read-only file system or a permission error (:data:`ENVIRONMENT_ERRNOS`) is
    reported the same way, with what to do; other exceptions keep their traceback.
    """
    try:
        return func()
    except LaplaceHeadError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        _fail(f"{exc}. {ENVIRONMENT_ERRNOS[exc.errno].capitalize()} {RESUME_HINT}")


def _fail(message: str) -> NoReturn:
    logging.getLogger("laplace_head").error("%s", message)
    print(f"ERROR: {message}", file=sys.stderr)
    raise SystemExit(1) from None


def run_rule(job: Any, func: Callable[[], T]) -> T:
    """Run a workflow script's stage call: log to the rule's ``log:`` file, user errors clean.

    ``job`` is the ``snakemake`` object of the script.
    """
    setup_logging(job.log[0])
    return run_user_facing(func)
