"""BIO tags on tokens back to character spans: the one place that decoding lives."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.runtimes import Entity


def decode_bio(
    text: str,
    tags: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    probs: Sequence[float],
) -> list[Entity]:
    """Merge B-/I- runs into spans; tokens with empty offsets (special tokens) end a span.

    An I- tag without a matching open span starts one (the usual lenient reading), so a
    model that misses a B- still yields the entity. A sub-word glued to an open span
    (no gap in the offsets) joins it unless it is tagged B-: entities are whole words.
    """
    spans: list[Entity] = []
    kind: str | None = None
    start = end = 0
    scores: list[float] = []

    def close() -> None:
        if kind is not None and end > start:
            value = text[start:end]
            spans.append(Entity(kind, value, start, end, min(scores)))

    for tag, (lo, hi), prob in zip(tags, offsets, probs, strict=True):
        if hi <= lo:  # special token
            close()
            kind = None
            continue
        prefix, _, name = tag.partition("-")
        glued = kind is not None and lo == end and prefix != "B"
        if glued or (prefix == "I" and kind == name):
            end, scores = hi, [*scores, prob]
            continue
        close()
        kind = name if prefix in ("B", "I") else None
        start, end, scores = lo, hi, [prob]
    close()
    return spans
