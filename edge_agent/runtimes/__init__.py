"""Model runtimes: each turns texts into predictions; the pool runs them off the event loop.

Imports config and the rooms below it.
"""

from __future__ import annotations

from typing import Protocol

from edge_agent.contract.manifest import Manifest
from edge_agent.contract.prediction import Prediction


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
