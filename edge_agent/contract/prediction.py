"""What a model says about one text: the label with its confidence, and typed spans. Shared by the runtimes,
the router, the reply and the trainer's evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entity:
    """A typed span; `start`/`end` are character offsets into the request text (end exclusive)."""

    type: str
    value: str
    start: int
    end: int
    confidence: float = 1.0  # a labelled span (training data) is certain

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.value,
            "start": self.start,
            "end": self.end,
            "confidence": round(self.confidence, 4),
        }


@dataclass(frozen=True)
class Prediction:
    """What a local model said about one text."""

    label: str | None
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    fields: dict[str, Any] | None = None
    version: str | None = None  # the artifact version that answered (set by the pool; a swap may fall between)
    distance: float | None = None  # how unlike the training data the text is (runtimes/distance.py), when known
