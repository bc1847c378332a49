from edge_agent.contract.schema import errors

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["a", "b"]},
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 2},
        "opt": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 2}]},
    },
    "required": ["label", "n"],
    "additionalProperties": False,
}


def test_valid_value_has_no_errors() -> None:
    assert errors({"label": "a", "n": 2, "tags": ["x"], "opt": None}, SCHEMA) == []


def test_every_violation_is_named_with_its_path() -> None:
    found = errors({"label": "c", "n": True, "tags": ["X", "y", "z"], "opt": "q", "more": 1}, SCHEMA)
    text = "\n".join(found)
    for part in (
        "$.label: 'c' is not one",
        "$.n: expected integer",
        "$.tags: more than 2",
        "$.tags[0]: does not match",
        "$.opt: matches none",
        "unexpected key 'more'",
    ):
        assert part in text, part
    assert errors({}, SCHEMA) == ["$: missing 'label'", "$: missing 'n'"]
    assert errors([], SCHEMA) == ["$: expected object, got list"]
    assert errors(4, {"type": "number", "maximum": 3}) == ["$: above 3"]


def test_key_counts_are_bounded() -> None:
    schema = {"type": "object", "minProperties": 1, "maxProperties": 2}
    assert errors({"a": 1}, schema) == []
    assert errors({}, schema) == ["$: fewer than 1 keys"]
    assert errors({"a": 1, "b": 2, "c": 3}, schema) == ["$: more than 2 keys"]
