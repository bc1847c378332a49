"""Model runtimes: each turns texts into predictions; the pool runs them off the event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.manifest import Manifest


@dataclass(frozen=True)
class Entity:
    """A typed span; `start`/`end` are character offsets into the request text (end exclusive)."""

    type: str
    value: str
    start: int
    end: int
    confidence: float

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


class Runtime(Protocol):
    """A loaded model. `predict` is blocking and called from one worker thread at a time."""

    manifest: Manifest

    def check_input(self, text: str) -> None:
        """Raise TooLarge before any work when the text exceeds the model's limits."""

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        """Predictions for a batch of texts, in order. A runtime whose work can run long (generation)
        stops with Timeout once a text's deadline (time.monotonic(), one per text) passes, freeing the
        model's worker."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
