"""The running agent's pid, in a file it holds an flock on for as long as it runs.

`edge-agent models pull` signals the agent (SIGHUP) after changing the store. A pid alone proves nothing (a
crash leaves the file, the pid is reused by `tail -f edge-agent.log`), so the CLI signals only a pid whose file
is locked: the lock dies with its process, whatever the way it dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edge_agent.errors import ConfigError


class PidFile:
    """Held by the agent from start to stop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def hold(self) -> None:
        """Write our pid under an exclusive lock; ConfigError (one line) when another agent holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a planted link: refused
        except OSError as exc:
            raise ConfigError([f"{self.path}: {exc.strerror} (the state folder must be the agent's own)"]) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError([f"{self.path}: another agent runs on this state folder"]) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def stale(self) -> bool:
        """A file no process holds: the run that wrote it did not stop cleanly (a crash, a kill, a power cut)."""
        return self.path.exists() and running_agent(self.path) is None

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def running_agent(path: Path) -> int | None:
    """The pid of the agent holding `path`, or None when no process holds it (a stale or missing file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: an agent runs, and this is its pid
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        return None  # we got the lock: nobody holds it, the file is stale
    finally:
        os.close(fd)
