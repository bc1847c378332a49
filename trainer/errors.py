"""The trainer's error vocabulary: each error knows the exit code the CLI returns for it."""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import EX_DATAERR  # one sysexits code, the agent's and the trainer's

EX_USAGE = 2  # wrong arguments or a folder that is not what the verb expects


class TrainerError(Exception):
    """A problem the user can fix; the CLI prints the message as one line, no traceback."""

    exit_code = 1


class UsageError(TrainerError):
    exit_code = EX_USAGE


class DataError(TrainerError):
    """Bad labelled data; the message names the file and, where there is one, the line."""

    exit_code = EX_DATAERR

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
