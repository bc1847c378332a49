"""BIO tags on tokens back to character spans: the one place that decoding lives."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.contract.prediction import Entity


def decode_bio(
    text: str,
    tags: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    probs: Sequence[float],
    words: Sequence[int | None] | None = None,
) -> list[Entity]:
    """Merge B-/I- runs into spans; tokens with empty offsets (special tokens) end a span.

    An I- tag without a matching open span starts one (the usual lenient reading), so a
    model that misses a B- still yields the entity. A sub-word piece of the word an open span
    ends in joins it unless tagged B- (entities are whole words); `words` holds each token's
    word index (the tokenizer's word_ids); without it, "no gap in the offsets" stands in.
    """
    spans: list[Entity] = []
    kind: str | None = None
    start = end = 0
    scores: list[float] = []

    def close() -> None:
        if kind is not None and end > start:
            value = text[start:end]
            spans.append(Entity(kind, value, start, end, min(scores)))

    word_of = list(words) if words is not None else [None] * len(tags)
    prev_word: int | None = None
    prev_hi = word_start = 0
    for tag, (lo, hi), prob, word in zip(tags, offsets, probs, word_of, strict=True):
        same_word = (word is not None and word == prev_word) if words is not None else lo == prev_hi
        prev_word, prev_hi = word, hi
        if hi <= lo:  # special token
            close()
            kind = None
            continue
        word_start = word_start if same_word else lo
        prefix, _, name = tag.partition("-")
        glued = kind is not None and same_word and prefix != "B"
        if glued or (prefix == "I" and kind == name):
            end, scores = hi, [*scores, prob]
            continue
        close()
        kind = name if prefix in ("B", "I") else None
        # a span never starts inside a word: a tagged piece after untagged ones takes its whole word
        start = word_start if kind is not None and same_word else lo
        end, scores = hi, [prob]
    close()
    return spans
