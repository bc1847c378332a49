"""The steps of a pull and a swap where the crash tests kill the process, and the fsyncs a power cut keeps.

`EDGE_AGENT_CRASH_AT=STEP` makes the process kill itself (SIGKILL: no cleanup, as a crash or the OOM killer)
when it reaches STEP; `EDGE_AGENT_SYNC_LOG=FILE` appends the inode of every file the store fsyncs, so a test
can drop what a power cut would lose. Both are off unless set: a device never sets them. The tests walk
every step in `STEPS`, so a step added to a pull must be named here to be tried.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

CRASH_AT, SYNC_LOG = "EDGE_AGENT_CRASH_AT", "EDGE_AGENT_SYNC_LOG"
STEPS = ("download", "verify", "warm_up", "rename", "state_write", "promote")


def reached(step: str) -> None:
    """The process got to `step` of a pull or a swap."""
    if os.environ.get(CRASH_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def synced(path: Path) -> None:
    """`path` was fsynced: what it holds now survives a power cut."""
    log = os.environ.get(SYNC_LOG)
    if log:
        st = os.stat(path)
        with open(log, "a", encoding="ascii") as fh:
            fh.write(f"{st.st_dev}:{st.st_ino}\n")
