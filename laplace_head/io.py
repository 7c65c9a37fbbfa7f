"""Atomic file writes, stable hashing and small JSON/YAML/NumPy helpers.

Every file the workflow produces goes through these writers: the bytes land in a temporary
file in the destination folder, are flushed and fsynced, then renamed over the final name.
A crash therefore leaves either the old file, no file, or a ``.tmp-*`` leftover - never a
file that looks complete but is truncated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Use this for writers that insist on a file name (h5py, torch.save, savefig). The temporary
    name keeps the final suffix (e.g. ``.png``) so libraries that infer a format still work.
    """
    path = Path(path)
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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as handle:
        os.fsync(handle.fileno())


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


def stable_hash(text: str, n_bytes: int = 8) -> int:
    """Stable non-negative integer hash of ``text`` (BLAKE2b; never Python's salted ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=n_bytes).digest()
    return int.from_bytes(digest, "big")


def derive_seed(base_seed: int, *keys: str | int) -> int:
    """A 63-bit seed from a config seed and any number of keys (e.g. a sample id).

    The result depends only on the values, not on call order, process or platform, so a draw
    seeded with it is the same whichever shard or worker makes it.
    """
    text = "\x1f".join([str(base_seed), *map(str, keys)])
    return stable_hash(text, n_bytes=8) >> 1


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_npy_safe(path: str | os.PathLike) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling objects (``allow_pickle=False``)."""
    return np.load(path, allow_pickle=False)
