"""Training tags and the agent's decoder agree: align then decode gives the gold spans back."""

from __future__ import annotations

import pytest

from edge_agent.runtimes.spans import decode_bio
from trainer.encoder import base as encoder_base
from trainer.encoder import tags
from trainer.records import Entity

TAGS = tags.tag_set(["device_type", "house_place", "time"])


def span(text: str, kind: str, value: str) -> Entity:
    start = text.index(value)
    return Entity(kind, value, start, start + len(value))


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("turn on the living room lights at seven am", [("house_place", "living room"), ("time", "seven am")]),
        ("start the vacuum cleaner", [("device_type", "vacuum cleaner")]),
        ("dim the hallway", [("house_place", "hallway")]),
        ("what time is it", []),
    ],
)
def test_align_then_decode_round_trips(text: str, gold: list[tuple[str, str]]) -> None:
    tokenizer = encoder_base.load_tokenizer(encoder_base.default_base())
    enc = tokenizer.encode(text, add_special_tokens=True)
    entities = [span(text, kind, value) for kind, value in gold]
    tag_ids = tags.align(enc.offsets, enc.special_tokens_mask, entities, TAGS)
    decoded = decode_bio(text, [TAGS[i] for i in tag_ids], enc.offsets, [1.0] * len(tag_ids))
    assert [(e.type, e.value, e.start) for e in decoded] == [(e.type, e.value, e.start) for e in entities]


def test_special_tokens_are_outside() -> None:
    tag_ids = tags.align([(0, 0), (0, 4), (0, 0)], [1, 0, 1], [Entity("time", "noon", 0, 4)], TAGS)
    assert [TAGS[i] for i in tag_ids] == ["O", "B-time", "O"]
