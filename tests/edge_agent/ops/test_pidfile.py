"""The CLI signals only an agent it has proven runs (issue 23): a pid file no process holds is never trusted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.ops.pidfile import PidFile, running_agent


def test_a_stale_pid_file_naming_another_process_is_not_trusted(tmp_path: Path) -> None:
    """Before: a stale agent.pid naming `tail -f edge-agent.log` got that process killed by SIGHUP."""
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "agent.pid").write_text(f"{bystander.pid}\n")
        assert running_agent(tmp_path / "agent.pid") is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_the_held_file_names_the_agent_and_a_second_agent_is_one_line(tmp_path: Path) -> None:
    held = PidFile(tmp_path / "state" / "agent.pid")
    held.hold()
    try:
        assert running_agent(held.path) == os.getpid()
        with pytest.raises(ConfigError, match="another agent runs on this state folder"):
            PidFile(held.path).hold()
    finally:
        held.release()
    assert not held.path.exists() and running_agent(held.path) is None


def test_a_planted_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "agent.pid").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"agent\.pid: "):
        PidFile(tmp_path / "agent.pid").hold()
    assert running_agent(tmp_path / "agent.pid") is None
