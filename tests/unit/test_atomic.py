"""laplace_head.util.atomic and .seeding: atomic writers, canonical JSON, safe .npy, seeds."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laplace_head.util import atomic as io
from laplace_head.util import seeding


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(io.TMP_PREFIX))


def test_atomic_write_json_is_canonical_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "record.json"
    io.atomic_write_json(path, {"b": 1, "a": [1, 2], "ü": "ß"})
    text = path.read_text(encoding="utf-8")
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1,\n  "ü": "ß"\n}\n'
    assert io.read_json(path) == {"a": [1, 2], "b": 1, "ü": "ß"}
    assert _leftovers(path.parent) == []


def test_json_dumps_does_not_depend_on_key_order() -> None:
    assert io.json_dumps({"x": 1, "y": {"b": 2, "a": 3}}) == io.json_dumps(
        {"y": {"a": 3, "b": 2}, "x": 1}
    )


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    io.atomic_write_text(path, "old")
    io.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="disk full"), io.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(io.TMP_PREFIX)
        assert tmp.suffix == ".pt"  # writers that infer a format from the suffix still work
        tmp.write_bytes(b"half writ")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"complete"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_without_old_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.h5"
    with pytest.raises(KeyboardInterrupt), io.atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_npy_round_trip_and_refuses_objects(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    io.atomic_save_npy(tmp_path / "a.npy", array)
    loaded = io.load_npy_safe(tmp_path / "a.npy")
    assert loaded.dtype == np.float16 and np.array_equal(loaded, array)
    with pytest.raises(ValueError):
        io.atomic_save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "o.npy").exists()
    assert _leftovers(tmp_path) == []


class _TouchOnUnpickle:
    """Unpickling this object creates a marker file (proof that a loader ran pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_npy_safe_never_unpickles(tmp_path: Path) -> None:
    # Positive control: the payload really does run when unpickled.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control)))
    assert control.exists()
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        io.load_npy_safe(path)
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    with pytest.raises(ValueError):
        io.load_npy_safe(tmp_path / "raw.npy")
    assert not marker.exists()


def test_atomic_write_csv_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"sample_id": ["a/ü x", "b/$(rm);`q`"], "n": [1, 2]})
    io.atomic_write_csv(tmp_path / "f.csv", frame)
    back = pd.read_csv(tmp_path / "f.csv", keep_default_na=False)
    assert back.equals(frame)
    assert "\r" not in (tmp_path / "f.csv").read_text()


def test_yaml_round_trip_keeps_key_order(tmp_path: Path) -> None:
    io.atomic_write_yaml(tmp_path / "c.yaml", {"z": 1, "a": {"ü": [1.5, None]}})
    assert list(io.read_yaml(tmp_path / "c.yaml")) == ["z", "a"]
    assert io.read_yaml(tmp_path / "c.yaml")["a"] == {"ü": [1.5, None]}


def test_file_md5_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert io.file_md5(tmp_path / "f", chunk_size=1024) == hashlib.md5(data).hexdigest()


def test_stable_hash_and_derive_seed_properties() -> None:
    assert seeding.stable_hash("cls/a") == seeding.stable_hash("cls/a")
    assert seeding.stable_hash("cls/a") != seeding.stable_hash("cls/b")
    assert 0 <= seeding.stable_hash("x", n_bytes=2) < 2**16
    seed = seeding.derive_seed(777, "cls/a")
    assert 0 <= seed < 2**63
    assert seed == seeding.derive_seed(777, "cls/a")
    assert seed != seeding.derive_seed(778, "cls/a")
    # The key boundaries matter: ("a", "b") is not ("ab",), and order matters.
    assert seeding.derive_seed(1, "a", "b") != seeding.derive_seed(1, "ab")
    assert seeding.derive_seed(1, "a", "b") != seeding.derive_seed(1, "b", "a")
    assert seeding.derive_seed(1, 5) == seeding.derive_seed(1, "5")


def test_hashes_do_not_depend_on_the_process(repo_root: Path) -> None:
    """BLAKE2b, not Python's salted hash(): identical in processes with other hash seeds."""
    code = (
        "from laplace_head.util.seeding import derive_seed, stable_hash; "
        "print(stable_hash('ü/x'), derive_seed(3, 'ü/x'))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=repo_root,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in (0, 1, 12345)
    }
    assert outputs == {f"{seeding.stable_hash('ü/x')} {seeding.derive_seed(3, 'ü/x')}\n"}


def test_json_is_valid_for_unicode_and_metacharacters(tmp_path: Path) -> None:
    record = {"sample_id": "kl asse/ü $x;`y` 'q' \"d\""}
    io.atomic_write_json(tmp_path / "r.json", record)
    assert json.loads((tmp_path / "r.json").read_bytes()) == record


def test_atomic_writes_get_umask_permissions_not_0600(tmp_path) -> None:
    import stat

    from laplace_head.util.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o644


# --- durability: fsync errors propagate, the folder is fsynced after the rename ---------------


def _fail_fsync(monkeypatch, only_directories: bool = False) -> list[bool]:
    """Make ``os.fsync`` raise EIO (for every fd, or only for directories); return the kinds."""
    import errno
    import stat

    real_fsync = os.fsync
    kinds: list[bool] = []

    def failing_fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        kinds.append(is_dir)
        if is_dir or not only_directories:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    return kinds


@pytest.mark.parametrize("existing", [True, False])
def test_fsync_error_of_the_file_propagates_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch, existing: bool
) -> None:
    path = tmp_path / "state.json"
    if existing:
        io.atomic_write_json(path, {"epoch": 1})
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="Input/output error"):
        io.atomic_write_json(path, {"epoch": 2})
    if existing:
        assert io.read_json(path) == {"epoch": 1}
    else:
        assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_fsync_error_propagates_from_atomic_path_writers(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"complete")
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError), io.atomic_path(path) as tmp:
        tmp.write_bytes(b"new weights")
    assert path.read_bytes() == b"complete"
    assert _leftovers(tmp_path) == []


def test_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    import stat

    real_fsync = os.fsync
    path = tmp_path / "sub" / "new" / "record.json"
    synced: list[tuple[bool, tuple[int, int], bool]] = []

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), (info.st_dev, info.st_ino), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    io.atomic_write_json(path, {"a": 1})
    folders = {identity: renamed for is_dir, identity, renamed in synced if is_dir}
    files = [renamed for is_dir, _, renamed in synced if not is_dir]
    parent = os.stat(path.parent)
    assert (parent.st_dev, parent.st_ino) in folders, "the destination folder was not fsynced"
    assert folders[(parent.st_dev, parent.st_ino)], "the folder was fsynced before the rename"
    assert files == [False], "the temporary file is fsynced once, before the rename"
    # Folders the write created are recorded in their own parents too.
    for created in (tmp_path, tmp_path / "sub"):
        info = os.stat(created)
        assert (info.st_dev, info.st_ino) in folders, f"{created} was not fsynced"


def test_fsync_error_of_the_folder_propagates_on_posix(tmp_path: Path, monkeypatch) -> None:
    if os.name != "posix":
        pytest.skip("folders are fsynced on POSIX only")
    kinds = _fail_fsync(monkeypatch, only_directories=True)
    with pytest.raises(OSError, match="Input/output error"):
        io.atomic_write_text(tmp_path / "a.txt", "x")
    assert True in kinds
    assert _leftovers(tmp_path) == []


def test_folder_that_cannot_be_opened_is_skipped(tmp_path: Path, monkeypatch) -> None:
    """Where a folder cannot be opened (Windows), the write still succeeds."""
    real_open = os.open

    def no_folders(name, flags, *args, **kwargs):
        if Path(name).is_dir():
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_folders)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert _leftovers(tmp_path) == []


def test_folder_fsync_unsupported_by_the_file_system_is_not_an_error(tmp_path, monkeypatch):
    """EINVAL from fsync on a folder means 'cannot sync folders here', not a lost write."""
    import errno
    import stat

    real_fsync = os.fsync

    def no_folder_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
