"""Labelled JSONL in, validated records out; every problem is a DataError naming file and line.

Also the JSONL both paths' data stages write (`write_split`, `load_split`) and the built-in examples
their tiny builds train on.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.contract.prediction import Entity
from trainer.errors import DataError


@dataclass(frozen=True)
class Record:
    text: str
    intent: str
    entities: tuple[Entity, ...] = field(default=())
    line: int = 0


def read(path: Path) -> list[Record]:
    """All records of a JSONL file; blank lines are skipped, an empty file is an error."""
    if not path.is_file():
        raise DataError(path, None, "no such file")
    records = [_parse(path, number, raw) for number, raw in lines(path)]
    if not records:
        raise DataError(path, 1, "file is empty (no JSON records)")
    return records


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, decoded one by one so a bad byte is reported with its line (a BOM is
    not data)."""
    with path.open("rb") as fh:
        for number, data in enumerate(fh, start=1):
            try:
                raw = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
            if raw.strip():
                yield number, raw


def _parse(path: Path, line: int, raw: str) -> Record:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, line, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(path, line, "expected a JSON object")
    text = _field(path, line, obj, "text", str)
    intent = _field(path, line, obj, "intent", str)
    if not text.strip() or not intent.strip():
        raise DataError(path, line, "`text` and `intent` must not be empty")
    entities = obj.get("entities", [])
    if not isinstance(entities, list):
        raise DataError(path, line, "`entities` must be a list")
    parsed = tuple(_entity(path, line, text, e) for e in entities)
    _check_overlaps(path, line, parsed)
    return Record(text=text, intent=intent, entities=parsed, line=line)


def _field(path: Path, line: int, obj: dict[str, Any], name: str, kind: type) -> Any:
    if name not in obj:
        raise DataError(path, line, f"missing field `{name}`")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(path, line, f"`{name}` must be a {kind.__name__}")
    return value


def _entity(path: Path, line: int, text: str, obj: Any) -> Entity:
    if not isinstance(obj, dict):
        raise DataError(path, line, "each entity must be an object with type, value, start, end")
    entity = Entity(
        type=_field(path, line, obj, "type", str),
        value=_field(path, line, obj, "value", str),
        start=_field(path, line, obj, "start", int),
        end=_field(path, line, obj, "end", int),
    )
    if not 0 <= entity.start < entity.end <= len(text):
        raise DataError(
            path,
            line,
            f"entity {entity.type!r}: offsets {entity.start}..{entity.end} outside the text (length {len(text)})",
        )
    if text[entity.start : entity.end] != entity.value:
        raise DataError(
            path,
            line,
            f"entity {entity.type!r}: text[{entity.start}:{entity.end}] is "
            f"{text[entity.start : entity.end]!r}, not the value {entity.value!r}",
        )
    return entity


def _check_overlaps(path: Path, line: int, entities: tuple[Entity, ...]) -> None:
    spans = sorted(entities, key=lambda e: e.start)
    for left, right in itertools.pairwise(spans):
        if right.start < left.end:
            raise DataError(path, line, f"entities {left.type!r} and {right.type!r} overlap")


def check_known(path: Path, records: list[Record], intents: set[str], types: set[str], train: Path) -> None:
    """Reject labels the model could never predict: seen in dev/test but not in train."""
    for rec in records:
        if rec.intent not in intents:
            raise DataError(path, rec.line, f"intent {rec.intent!r} does not occur in {train}")
        for ent in rec.entities:
            if ent.type not in types:
                raise DataError(path, rec.line, f"entity type {ent.type!r} does not occur in {train}")


def write_split(
    path: Path,
    rows: Iterable[dict[str, Any]],
    length: Callable[[dict[str, Any]], int],
    limit: int,
    ensure_ascii: bool = True,
) -> dict[str, int]:
    """Encoded examples as JSONL; those whose input `length` exceeds the model's `limit` (in tokens) are
    left out, counted and warned about."""
    kept = too_long = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            if length(row) > limit:
                too_long += 1
                continue
            fh.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")
            kept += 1
    if too_long:
        print(f"warning: {path.name}: {too_long} examples longer than {limit} tokens left out", file=sys.stderr)
    return {"examples": kept, "too_long": too_long}


def load_split(folder: Path, name: str) -> list[dict[str, Any]]:
    """A split a data stage encoded (`train`, `dev`): one dict per line."""
    with (folder / f"{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


_ROOMS = ["kitchen", "bedroom", "living room", "hall"]
_TEMPLATES = {
    "lights_on": ["turn on the lights in the {room}", "switch the {room} lights on", "lights on in the {room}"],
    "lights_off": ["turn off the lights in the {room}", "switch the {room} lights off", "lights off in the {room}"],
    "weather": ["what is the weather like", "will it rain today", "how warm is it outside"],
}


def builtin_records() -> list[dict[str, object]]:
    """24 examples over 3 intents; the light commands carry a `house_place` entity (tests, tiny builds)."""
    out: list[dict[str, object]] = []
    for intent, templates in _TEMPLATES.items():
        for i, template in enumerate(templates * 3):
            if len(out) >= 8 * (1 + list(_TEMPLATES).index(intent)):
                break
            room = _ROOMS[i % len(_ROOMS)]
            text = template.format(room=room)
            entities = []
            if "{room}" in template:
                start = text.index(room)
                entities = [{"type": "house_place", "value": room, "start": start, "end": start + len(room)}]
            out.append({"text": text, "intent": intent, "entities": entities})
    return out


def write_builtin(path: Path) -> Path:
    """`builtin_records` as a JSONL file."""
    path.write_text("".join(json.dumps(r) + "\n" for r in builtin_records()))
    return path
