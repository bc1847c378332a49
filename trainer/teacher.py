"""What the cloud taught the fleet, as training data: feedback rows from one or many devices, cleaned.

Each device exports its escalations with the cloud's answer as the label (`edge-agent feedback export`).
Here they are merged: texts redacted again (the trainer's own patterns on top of the devices'),
deduplicated across devices (case and spacing folded; a text the devices labelled differently takes
the majority label, a tie is dropped), texts already in the training or evaluation data dropped, a
share held out (by a hash of the text: the same text always falls on the same side), half of it for
calibration (it joins dev) and half for the report alone, and the rest capped per label, so one
chatty sensor cannot swamp the set. A label the model does not have joins the label set only with
`min_new` examples; fewer are kept for later.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import records
from trainer.errors import DataError, UsageError

MASK = "[REDACTED]"  # as edge_agent.routing.feedback


def key(text: str) -> str:
    return " ".join(text.casefold().split())


def _hash(text: str) -> float:
    """A stable draw in [0, 1) from the folded text."""
    return int(hashlib.sha256(key(text).encode()).hexdigest()[:12], 16) / float(1 << 48)


@dataclass
class Taught:
    """The cleaned feedback, and what was dropped on the way (for the report)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # folded text -> row
    read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def keys(texts: list[str], redact: list[str]) -> set[str]:
    """Folded texts, and their redacted forms: a feedback text masked by the same patterns is still known."""
    patterns = [re.compile(p) for p in redact]
    out = set()
    for text in texts:
        out.add(key(text))
        for pattern in patterns:
            text = pattern.sub(MASK, text)
        out.add(key(text))
    return out


def collect(
    paths: list[Path], redact: list[str], exclude: set[str], entity_types: set[str] | None, model: str | None = None
) -> Taught:
    """Feedback files -> one row per distinct text with the devices' majority label. `exclude`: folded
    texts of the training and evaluation data (`keys`); `entity_types`: the ones kept (None: all);
    `model`: the rows of that model only (files exported for all models hold several)."""
    patterns = [re.compile(p) for p in redact]
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    first: dict[str, dict[str, Any]] = {}
    taught = Taught()
    models: set[str] = set()
    for path in paths:
        for number, raw in records.lines(path):
            taught.read += 1
            row = _row(path, number, raw, patterns, entity_types, taught.dropped)
            if row is None:
                continue
            origin = row.pop("model")
            if model is not None and origin not in (None, model):
                taught.dropped["another model's"] += 1
                continue
            models.add(origin)
            k = key(row["text"])
            if k in exclude:
                taught.dropped["already in the data"] += 1
                continue
            votes[k][row["intent"]] += 1
            first.setdefault(k, row)
    named = sorted(m for m in models if m is not None)
    if model is None and len(named) > 1:
        raise UsageError(f"the feedback holds rows of several models ({', '.join(named)}): pass --model")
    for k, counts in votes.items():
        (label, n), *rest = counts.most_common()
        if rest and rest[0][1] == n:
            taught.dropped["devices disagree (tie)"] += sum(counts.values())
            continue
        taught.dropped["duplicates"] += sum(counts.values()) - 1
        row = first[k] if first[k]["intent"] == label else {"text": first[k]["text"], "intent": label, "entities": []}
        taught.rows[k] = row
    return taught


def _row(
    path: Path,
    number: int,
    raw: str,
    patterns: list[re.Pattern[str]],
    entity_types: set[str] | None,
    dropped: Counter[str],
) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(
            path, number, f"invalid JSON ({exc.msg}): is this an `edge-agent feedback export` file?"
        ) from None
    text, intent = (
        obj.get("text") if isinstance(obj, dict) else None,
        obj.get("intent") if isinstance(obj, dict) else None,
    )
    if not isinstance(text, str) or not text.strip() or not isinstance(intent, str) or not intent.strip():
        dropped["no text or no label"] += 1
        return None
    clean = text
    for pattern in patterns:
        clean = pattern.sub(MASK, clean)
    entities = [] if clean != text else _entities(obj.get("entities"), text, entity_types, dropped)
    origin = obj.get("model")
    return {"text": clean, "intent": intent, "entities": entities, "model": origin if isinstance(origin, str) else None}


def _entities(value: Any, text: str, entity_types: set[str] | None, dropped: Counter[str]) -> list[dict[str, Any]]:
    """The teacher's entities that still point at their value in the text, of a type the model has."""
    kept = []
    for e in value if isinstance(value, list) else []:
        if not isinstance(e, dict) or text[e.get("start", 0) : e.get("end", 0)] != e.get("value"):
            dropped["entity not in its text"] += 1
        elif entity_types is not None and e.get("type") not in entity_types:
            dropped["entity of a type the model lacks"] += 1
        else:
            kept.append({k: e[k] for k in ("type", "value", "start", "end")})
    return kept


@dataclass
class Plan:
    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]  # joins dev: calibrates the candidate (new labels need dev examples)
    report: list[dict[str, Any]]  # held out of everything: the report compares both versions on it
    added: dict[str, int]  # new label -> examples
    pending: dict[str, int]  # new label with too few examples -> examples (kept for later)
    capped: dict[str, int]  # label -> rows left out by the cap
    later: list[dict[str, Any]]


def plan(taught: Taught, known: list[str], cap: int, min_new: int, holdout: float) -> Plan:
    """Split the cleaned rows: hold out a share, cap per label, admit new labels with enough rows."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for k in sorted(taught.rows, key=_hash):
        by_label[taught.rows[k]["intent"]].append(taught.rows[k])
    out = Plan([], [], [], {}, {}, {}, [])
    for label, rows in sorted(by_label.items()):
        if label not in known and len(rows) < min_new:
            out.pending[label] = len(rows)
            out.later += rows
            continue
        if label not in known:
            out.added[label] = len(rows)
        out.report += [r for r in rows if _hash(r["text"]) < holdout / 2]
        out.holdout += [r for r in rows if holdout / 2 <= _hash(r["text"]) < holdout]
        rest = [r for r in rows if _hash(r["text"]) >= holdout]
        out.train += rest[:cap]
        if len(rest) > cap:
            out.capped[label] = len(rest) - cap
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
