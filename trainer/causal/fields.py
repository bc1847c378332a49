"""Fields for extraction: read from JSONL (`fields`, or `entities` turned into fields), the bounded
JSON schema the data implies, and the one rendering of an answer that training and serving share.

Bounded on purpose: the agent builds its grammar from this schema and derives max_tokens from it,
so closed sets are enums, strings have a maxLength, numbers a range, arrays a maxItems.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from trainer.records import Record

INTENT = "intent"
ENUM_MAX = 16  # a string field with at most this many distinct values (each seen twice) is a closed set
MIN_LENGTH, MAX_LENGTH = 16, 128


def from_entities(rec: Record, repeated: set[str]) -> dict[str, Any]:
    """{type: value}; types that occur more than once in some training record become lists."""
    out: dict[str, Any] = {}
    for ent in sorted(rec.entities, key=lambda e: e.start):
        if ent.type in repeated:
            out.setdefault(ent.type, []).append(ent.value)
        else:
            out[ent.type] = ent.value
    return out


def repeated_types(recs: Iterable[Record]) -> set[str]:
    return {t for r in recs for t, n in Counter(e.type for e in r.entities).items() if n > 1}


def infer_schema(rows: list[dict[str, Any]], labels: list[str], closed_sets: bool = True) -> dict[str, Any]:
    """The schema of `rows` (field dicts): intent first (an enum, when there are labels), then fields A-Z.

    `closed_sets=False` for fields made from entity spans: those are open vocabularies, never enums.
    """
    names = sorted({k for row in rows for k in row} - {INTENT})
    props: dict[str, Any] = {INTENT: {"type": "string", "enum": labels}} if labels else {}
    for name in names:
        props[name] = _property(name, [row[name] for row in rows if name in row], closed_sets)
    required = [INTENT] if labels else []
    required += [n for n in names if all(n in row for row in rows)]
    most = max((len(row) for row in rows), default=0)
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
        "maxProperties": max(len(required), most + 1),  # bounds the answer's length, hence max_tokens
    }


def _property(name: str, values: list[Any], closed: bool) -> dict[str, Any]:
    if all(isinstance(v, list) for v in values):
        items = [x for v in values for x in v]
        return {"type": "array", "items": _scalar(name, items, closed), "maxItems": max(2, max(len(v) for v in values))}
    return _scalar(name, values, closed)


def _scalar(name: str, values: list[Any], closed: bool) -> dict[str, Any]:
    if all(isinstance(v, bool) for v in values):
        return {"type": "boolean"}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"type": "integer", **_range(values)}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {"type": "number", **_range(values)}
    if all(isinstance(v, str) for v in values):
        return _string(values, closed)
    raise ValueError(f"field {name!r}: values must all be strings, numbers, booleans or lists of strings")


def _range(values: list[Any]) -> dict[str, Any]:
    """Observed range widened by its own width (at least 10), so new but plausible values still fit."""
    lo, hi = min(values), max(values)
    pad = max(10, hi - lo)
    return {"minimum": lo - pad if lo < 0 else max(0, lo - pad), "maximum": hi + pad}


def _string(values: list[str], closed: bool) -> dict[str, Any]:
    counts = Counter(values)
    if closed and len(counts) <= ENUM_MAX and len(values) >= 2 * len(counts) and min(counts.values()) >= 2:
        return {"type": "string", "enum": sorted(counts)}
    longest = max((len(v) for v in values), default=0)
    return {"type": "string", "maxLength": min(MAX_LENGTH, max(MIN_LENGTH, 2 * longest))}


def render(fields: dict[str, Any], schema: dict[str, Any]) -> str:
    """The answer text: compact JSON, keys in schema order (the grammar allows only that order)."""
    order = list(schema.get("properties", {}))
    ordered = {k: fields[k] for k in order if k in fields}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))


def mentions(fields: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Fields back to (type, value) mentions, for entity precision / recall (intent left out)."""
    out: list[tuple[str, str]] = []
    for key, value in (fields or {}).items():
        if key == INTENT:
            continue
        for item in value if isinstance(value, list) else [value]:
            out.append((key, str(item)))
    return out
