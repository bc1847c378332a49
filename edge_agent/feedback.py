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
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from edge_agent.runtimes import Entity, Prediction

MASK = "[REDACTED]"
CHUNK = 1 << 16  # bytes per read when counting and trimming


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


class FeedbackLog:
    """Append-only JSONL per model, trimmed to the newest `max_rows` (writes may come from threads)."""

    def __init__(self, folder: Path, max_rows: int) -> None:
        self.folder = folder
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}

    def path(self, model: str) -> Path:
        return self.folder / f"{model}.jsonl"

    def append(self, model: str, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(model)
            if model not in self._rows:
                self._rows[model] = _count(path)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(line)
            self._rows[model] += 1
            if self._rows[model] > self.max_rows + max(1, self.max_rows // 10):
                self._rows[model] = _trim(path, self.max_rows)

    def rows(self, model: str | None = None) -> Iterator[str]:
        """Stored lines (with their newline), one model or all, oldest first per model."""
        paths = [self.path(model)] if model else sorted(self.folder.glob("*.jsonl"))
        for path in paths:
            if path.is_file():
                with path.open(encoding="utf-8") as fh:
                    yield from fh


def _count(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(CHUNK), b""))


def _trim(path: Path, keep: int) -> int:
    """Keep the newest `keep` rows: find where they start from the end, copy that tail in chunks to a temp
    file and rename it over the log (atomic). Memory stays at a chunk, whatever the file's size."""
    tmp = path.with_suffix(".tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        start, rows = _tail(src, os.fstat(src.fileno()).st_size, keep)
        src.seek(start)
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())  # the rename must not land before the data (a device loses power)
    os.replace(tmp, path)
    return rows


def _tail(fh: BinaryIO, size: int, keep: int) -> tuple[int, int]:
    """Offset where the newest `keep` rows begin, and how many rows that is. Rows end at b"\n" only:
    U+2028, U+2029 and U+0085 stay raw inside them (json.dumps with ensure_ascii=False)."""
    start, rows = size, 0
    if size == 0:
        return start, rows
    for newline in chain(_newlines_backwards(fh, size - 1), [-1]):  # -1: the file's first row starts at 0
        if rows == keep:
            break
        start, rows = newline + 1, rows + 1
    return start, rows


def _newlines_backwards(fh: BinaryIO, end: int) -> Iterator[int]:
    """Offsets of b"\n" before `end`, the last first, reading CHUNK bytes at a time back from there."""
    while end > 0:
        begin = max(0, end - CHUNK)
        fh.seek(begin)
        block = fh.read(end - begin)
        at = len(block)
        while (at := block.rfind(b"\n", 0, at)) >= 0:
            yield begin + at
        end = begin
