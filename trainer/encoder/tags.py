"""Char-span entities -> one BIO tag per token, for training.

Every token that overlaps an entity is tagged (the first B-x, the rest I-x, word pieces included);
special tokens are O. Decoding tags back to spans lives in one place, the agent's
`edge_agent.runtimes.spans.decode_bio`, and evaluation goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.contract.prediction import Entity

OUTSIDE = "O"


def tag_set(entity_types: Sequence[str]) -> list[str]:
    """Column order of the tag head: O first, then B-x, I-x per type."""
    return [OUTSIDE] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


def align(
    offsets: Sequence[tuple[int, int]], special: Sequence[int], entities: Sequence[Entity], tags: Sequence[str]
) -> list[int]:
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
