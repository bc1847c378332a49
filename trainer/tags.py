"""BIO tags over tokens, both ways: char spans -> one tag per token, and tags -> char spans.

Convention shared with the agent's runtime: every token of an entity is tagged (the first B-x,
the rest I-x, word pieces included), special tokens are O, and when decoding an I-x that does not
continue an x starts a new entity. A span runs from its first token's start to its last token's end.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.records import Entity

OUTSIDE = "O"


def tag_set(entity_types: Sequence[str]) -> list[str]:
    """Column order of the tag head: O first, then B-x, I-x per type."""
    return [OUTSIDE] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


def align(offsets: Sequence[tuple[int, int]], special: Sequence[int], entities: Sequence[Entity],
          tags: Sequence[str]) -> list[int]:
    """Tag index per token: a token belongs to an entity when its characters overlap the span."""
    index = {tag: i for i, tag in enumerate(tags)}
    out = [index[OUTSIDE]] * len(offsets)
    for ent in entities:
        first = True
        for i, (start, end) in enumerate(offsets):
            if special[i] or end <= start or end <= ent.start or start >= ent.end:
                continue
            out[i] = index[f"{'B' if first else 'I'}-{ent.type}"]
            first = False
    return out


def decode(text: str, offsets: Sequence[tuple[int, int]], tag_ids: Sequence[int],
           tags: Sequence[str]) -> list[Entity]:
    """Entities from per-token tag indices (special tokens and padding must already be O)."""
    found: list[Entity] = []
    current: tuple[str, int, int] | None = None
    for (start, end), tag_id in zip(offsets, tag_ids):
        tag = tags[tag_id]
        if tag == OUTSIDE or end <= start:
            current = _close(text, current, found)
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and current is not None and current[0] == kind:
            current = (kind, current[1], end)
        else:
            _close(text, current, found)
            current = (kind, start, end)
    _close(text, current, found)
    return found


def _close(text: str, span: tuple[str, int, int] | None, found: list[Entity]) -> None:
    if span is not None:
        kind, start, end = span
        found.append(Entity(type=kind, value=text[start:end], start=start, end=end))
