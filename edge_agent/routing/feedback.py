"""Every escalation the cloud answered, kept as training data in the trainer's JSONL schema.

One bounded file per model under `{state_dir}/feedback/`: `{"text", "intent", "entities"}` with the
cloud as the teacher, plus `local_label`, `local_confidence`, `model`, `version`, `reason`, `ts`.
Text is redacted before it is stored, so what the device got wrong can be shipped to the trainer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from edge_agent.contract.prediction import Entity, Prediction

MASK = "[REDACTED]"
CHUNK = 1 << 16  # bytes per read when counting and trimming
MAX_BYTES = 16 << 20  # per model file; AgentSettings.feedback_max_bytes


def redact(text: str, patterns: list[re.Pattern[str]]) -> str:
    for pattern in patterns:
        text = pattern.sub(MASK, text)
    return text


def record(
    text: str,
    local: Prediction | None,
    cloud: Prediction,
    meta: dict[str, Any],
    patterns: list[re.Pattern[str]],
) -> dict[str, Any]:
    """One training row. Entities are re-located in the redacted text; those redacted away are dropped."""
    clean = redact(text, patterns)
    row: dict[str, Any] = {"text": clean, "intent": cloud.label, "entities": _entities(clean, cloud.entities)}
    if cloud.fields is not None:
        row["fields"] = cloud.fields
    row["local_label"] = local.label if local else None
    row["local_confidence"] = round(local.confidence, 6) if local else None
    return {**row, **meta, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _entities(text: str, entities: list[Entity]) -> list[dict[str, Any]]:
    rows, pos = [], 0
    for e in sorted(entities, key=lambda e: e.start):
        start = text.find(e.value, pos)
        if start < 0 or MASK in e.value:
            continue
        rows.append({"type": e.type, "value": e.value, "start": start, "end": start + len(e.value)})
        pos = start + len(e.value)
    return rows


@dataclass(frozen=True)
class _Held:
    """What one model's file holds, counted from disk once and then kept up to date in memory."""

    rows: int
    size: int


class FeedbackLog:
    """Append-only JSONL per model, bounded in rows and bytes: the oldest rows go first (writes may come from
    threads). A file never exceeds `max_bytes`; it may hold 10% more rows than `max_rows` between trims."""

    def __init__(self, folder: Path, max_rows: int, max_bytes: int = MAX_BYTES) -> None:
        self.folder = folder
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    def path(self, model: str) -> Path:
        return self.folder / f"{model}.jsonl"

    def append(self, model: str, row: dict[str, Any]) -> bool:
        """Store the row; False when it alone is larger than `max_bytes` (never stored, the bound holds)."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        if len(line) > self.max_bytes:
            return False
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(model)
            held = self._held.get(model) or _measure(path)
            if held.rows >= self.max_rows + max(1, self.max_rows // 10) or held.size + len(line) > self.max_bytes:
                room = max(0, self.max_bytes - self.max_bytes // 10 - len(line))  # the slack spaces out the trims
                held = _trim(path, self.max_rows - 1, room)
            with _append_only(path) as fh:
                fh.write(line)
            self._held[model] = _Held(held.rows + 1, held.size + len(line))
        return True

    def rows(self, model: str | None = None) -> Iterator[str]:
        """Stored lines (with their newline), one model or all, oldest first per model."""
        paths = [self.path(model)] if model else sorted(self.folder.glob("*.jsonl"))
        for path in paths:
            if path.is_file():
                with path.open(encoding="utf-8") as fh:
                    yield from fh


def _append_only(path: Path) -> BinaryIO:
    """The model's file, opened to append, never through a link planted in the state folder (one would make the
    agent write where it points): O_NOFOLLOW refuses it with ELOOP."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "ab")


def _measure(path: Path) -> _Held:
    if not path.is_file():
        return _Held(0, 0)
    with path.open("rb") as fh:
        rows = sum(block.count(b"\n") for block in iter(lambda: fh.read(CHUNK), b""))
        return _Held(rows, fh.tell())


def _trim(path: Path, rows: int, size: int) -> _Held:
    """Keep the newest rows within `rows` and `size` bytes: find where they start from the end, copy that tail
    in chunks to a temp file and rename it over the log (atomic). Memory stays at a chunk, whatever the size."""
    tmp = path.with_suffix(".tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        end = os.fstat(src.fileno()).st_size
        start, kept = _tail(src, end, rows, size)
        src.seek(start)
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())  # the rename must not land before the data (a device loses power)
    os.replace(tmp, path)
    return _Held(kept, end - start)


def _tail(fh: BinaryIO, end: int, rows: int, size: int) -> tuple[int, int]:
    """Offset where the newest rows within `rows` and `size` bytes begin, and how many they are. Rows end at
    a newline byte only: U+2028, U+2029 and U+0085 stay raw inside them (json.dumps with ensure_ascii=False)."""
    start, kept = end, 0
    if end == 0:
        return start, kept
    for newline in chain(_newlines_backwards(fh, end - 1), [-1]):  # -1: the file's first row starts at 0
        if kept == rows or end - (newline + 1) > size:
            break
        start, kept = newline + 1, kept + 1
    return start, kept


def _newlines_backwards(fh: BinaryIO, end: int) -> Iterator[int]:
    """Offsets of the newline bytes before `end`, the last first, reading CHUNK bytes at a time back from there."""
    while end > 0:
        begin = max(0, end - CHUNK)
        fh.seek(begin)
        block = fh.read(end - begin)
        at = len(block)
        while (at := block.rfind(b"\n", 0, at)) >= 0:
            yield begin + at
        end = begin
