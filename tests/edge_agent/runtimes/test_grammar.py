"""The fields schema as a grammar: llama.cpp accepts it, it is bounded, and it admits training's answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_agent.runtimes.grammar import gbnf, literal, max_bytes
from trainer.causal import fields

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["lights_on", "lights_off"]},
        "room": {"type": "string", "maxLength": 12},
        "count": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["intent"],
    "additionalProperties": False,
}


def test_llama_cpp_parses_the_grammar() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    assert llama_cpp.LlamaGrammar.from_string(gbnf(SCHEMA), verbose=False) is not None


def test_grammar_is_bounded_and_max_bytes_covers_the_longest_answer() -> None:
    text = gbnf(SCHEMA)
    assert "{0,12}" in text and "{0,5}" in text and "*" not in text and "+" not in text
    longest = {"intent": "lights_off", "room": "x" * 12, "count": 120, "tags": ["abcde"] * 3, "ok": False}
    assert len(fields.render(longest, SCHEMA).encode()) <= max_bytes(SCHEMA)


def test_literal_escapes_quotes_backslashes_and_newlines() -> None:
    assert literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_infer_schema_from_entities_and_fields() -> None:
    rows = [
        {"intent": "a", "room": "kitchen", "n": 3},
        {"intent": "b", "room": "hall", "n": 4, "dates": ["mon", "tue"]},
        {"intent": "a", "room": "kitchen", "n": 5},
        {"intent": "b", "room": "hall", "n": 6},
    ]
    schema = fields.infer_schema(rows, ["a", "b"])
    props = schema["properties"]
    assert list(props) == ["intent", "dates", "n", "room"]  # intent first, then A-Z: the answer's key order
    assert props["intent"]["enum"] == ["a", "b"] and props["room"]["enum"] == ["hall", "kitchen"]
    assert props["n"]["type"] == "integer" and props["n"]["minimum"] <= 3 and props["n"]["maximum"] >= 6
    assert props["dates"]["type"] == "array" and props["dates"]["items"]["maxLength"] >= 16
    assert schema["required"] == ["intent", "n", "room"] and schema["additionalProperties"] is False
    answer = fields.render({"room": "hall", "intent": "b", "n": 4}, schema)
    assert answer == '{"intent":"b","n":4,"room":"hall"}' and json.loads(answer)["n"] == 4
    assert fields.mentions({"intent": "b", "dates": ["mon", "tue"]}) == [("dates", "mon"), ("dates", "tue")]
