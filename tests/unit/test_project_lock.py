"""laplace_head.util.project_lock: one run at a time on a project folder, the holder named, a
stale lock broken; the stand-alone commands take it and ``unlock`` removes it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from laplace_head.cli import main as cli_main
from laplace_head.layout import ProjectLayout
from laplace_head.util.project_lock import ProjectLock, ProjectLockedError


def _hold(path: Path, pid: int, host: str | None = None) -> dict:
    """A lock file as another run writes it."""
    holder = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-01-01T00:00:00+00:00",
        "cwd": "/elsewhere/checkout",
        "command": "snakemake --cores 4",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))
    return holder


def _gone_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_names_its_holder_and_is_given_back(tmp_path):
    lock = ProjectLock(ProjectLayout(tmp_path / "project").lock)
    lock.acquire()
    holder = lock.holder()
    assert (holder["pid"], holder["host"], holder["cwd"]) == (
        os.getpid(),
        socket.gethostname(),
        os.getcwd(),
    )
    assert holder["started"]
    lock.acquire()  # the holder itself: no error
    lock.release()
    assert not lock.path.exists()


@pytest.mark.parametrize("host", [None, "another-host"])
def test_a_second_run_is_refused_naming_the_holder(tmp_path, host):
    path = ProjectLayout(tmp_path / "project").lock
    holder = _hold(path, os.getppid(), host)  # a live process (here) or one we cannot check
    lock = ProjectLock(path)
    with pytest.raises(ProjectLockedError) as error:
        lock.acquire()
    message = str(error.value)
    for value in (str(path), str(holder["pid"]), holder["host"], holder["cwd"], holder["started"]):
        assert value in message
    assert "python -m laplace_head unlock --config" in message
    lock.release()  # not ours: left alone
    assert json.loads(path.read_text()) == holder


def test_a_stale_lock_on_this_host_is_broken_with_a_warning(tmp_path, caplog):
    path = ProjectLayout(tmp_path / "project").lock
    pid = _gone_pid()
    _hold(path, pid)
    lock = ProjectLock(path)
    with caplog.at_level("WARNING", logger="laplace_head.util.project_lock"):
        lock.acquire()
    assert f"pid {pid}" in caplog.text and "breaking the lock" in caplog.text
    assert lock.holder()["pid"] == os.getpid()
    lock.release()


def test_an_unreadable_lock_is_refused_not_broken(tmp_path):
    path = ProjectLayout(tmp_path / "project").lock
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ProjectLockedError, match="unreadable"):
        ProjectLock(path).acquire()
    assert path.exists()


def _config(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "project"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"data": {"project_root": str(root)}, "wandb": {"enabled": False}})
    )
    return config, ProjectLayout(root).lock


def test_a_stage_command_is_refused_while_another_run_holds_the_project(tmp_path, capsys):
    config, path = _config(tmp_path)
    _hold(path, os.getppid())
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", "--config", str(config)])
    assert exit_info.value.code == 1
    assert "another run works on this project folder" in capsys.readouterr().err
    assert not (tmp_path / "project" / "logs").exists()  # refused before any work


def test_a_stage_command_gives_the_lock_back_when_it_ends(tmp_path):
    config, path = _config(tmp_path)
    with pytest.raises(SystemExit):  # no manifests yet: a user error, after the lock was taken
        cli_main(["evaluate", "--config", str(config)])
    assert not path.exists()


def test_unlock_removes_a_lock_and_refuses_a_live_one_without_force(tmp_path, capsys):
    config, path = _config(tmp_path)
    _hold(path, os.getppid(), "another-host")
    cli_main(["unlock", "--config", str(config)])
    assert not path.exists() and "another-host" in capsys.readouterr().out
    _hold(path, os.getppid())  # alive on this host
    with pytest.raises(SystemExit):
        cli_main(["unlock", "--config", str(config)])
    assert path.exists()
    cli_main(["unlock", "--config", str(config), "--force"])
    assert not path.exists()
    cli_main(["unlock", "--config", str(config)])
    assert "not locked" in capsys.readouterr().out
