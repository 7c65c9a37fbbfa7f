"""Fault-injection hooks (kill / stop at a named point) and removal of interrupted-write debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laplace_head.util import faults
from laplace_head.util.atomic import atomic_write_json, remove_stale_temp_files
from laplace_head.util.faults import KILL_AT_ENV, PAUSE_AT_ENV, fault_point, parse_spec

COUNTING_SCRIPT = """
from laplace_head.util.faults import fault_point
for i in range(5):
    fault_point("other")
    fault_point("x")
    print(i, flush=True)
"""


def _python(code: str, **env: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if k not in (KILL_AT_ENV, PAUSE_AT_ENV)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_parse_spec() -> None:
    assert parse_spec("pack_hdf5:3") == {"pack_hdf5": 3}
    assert parse_spec(" a:1 , b:c:2 ,") == {"a": 1, "b:c": 2}
    for bad in ("a", "a:", ":3", "a:0", "a:x", "a:-1"):
        with pytest.raises(ValueError, match="<name>:<n>"):
            parse_spec(bad)


def test_unset_environment_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv(KILL_AT_ENV, raising=False)
    monkeypatch.delenv(PAUSE_AT_ENV, raising=False)
    faults.reset_counts()
    for _ in range(1000):
        fault_point("x")
    assert faults._calls == {}  # not even counted


def test_kill_at_the_nth_call_of_that_name_only() -> None:
    process = _python(COUNTING_SCRIPT, **{KILL_AT_ENV: "x:3"})
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr
    assert stdout.split() == ["0", "1"]  # calls 1 and 2 of "x" passed; "other" is not counted


def test_pause_stops_the_process_until_sigcont(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    code = (
        "from laplace_head.util.console import setup_logging\n"
        f"setup_logging({str(log)!r})\n" + COUNTING_SCRIPT
    )
    process = _python(code, **{PAUSE_AT_ENV: "x:2"})
    try:
        deadline = time.monotonic() + 60
        while "fault injection: stopped pid" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        assert f"stopped pid {process.pid} at x call 2" in log.read_text()
        while _proc_state(process.pid) != "T":  # stopped by SIGSTOP
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGCONT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert stdout.split() == ["0", "1", "2", "3", "4"]


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_leftover_of_a_write_killed_midway_is_removed(tmp_path: Path) -> None:
    """A real SIGKILL inside ``atomic_path`` leaves a ``.tmp-*`` file and no final file."""
    code = (
        "import os, signal\n"
        "from laplace_head.util.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'out.h5')!r}) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    process = _python(code)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    (leftover,) = tmp_path.glob(".tmp-out.h5.*")
    assert not (tmp_path / "out.h5").exists()
    assert remove_stale_temp_files(tmp_path, ["out.h5"]) == [leftover]
    assert not list(tmp_path.iterdir())


def test_only_the_named_outputs_leftovers_are_removed(tmp_path: Path) -> None:
    names = {
        ".tmp-a.json.abcd_123.json": True,  # the leftover of a.json
        ".tmp-a.json.json.abcd_123.json": False,  # of "a.json.json", another output
        ".tmp-a.json.abcd_12.json": False,  # not a mkstemp name
        ".tmp-b.json.abcd_123.json": False,
        "a.json": False,
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path, ["a.json"])
    assert sorted(p.name for p in removed) == [n for n, gone in names.items() if gone]
    everything = remove_stale_temp_files(tmp_path)  # a folder one job owns
    assert sorted(p.name for p in everything) == sorted(
        n for n, gone in names.items() if not gone and n.startswith(".tmp-")
    )
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_finished_files_are_never_touched(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / ".tmp-like-name.json", {"a": 1})  # a real output, odd name
    before = (tmp_path / ".tmp-like-name.json").stat().st_mtime_ns
    assert remove_stale_temp_files(tmp_path, ["like-name.json", "other.json"]) == []
    assert (tmp_path / ".tmp-like-name.json").stat().st_mtime_ns == before
