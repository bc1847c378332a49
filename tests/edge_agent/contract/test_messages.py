"""Parsing is total and one pass; every reply body comes from one function and always encodes."""

import json

import pytest

from edge_agent.contract.messages import (
    Answer,
    CommandDone,
    CommandReply,
    Envelope,
    Inbound,
    ModelReply,
    encode,
    message_id,
    parse,
    sensor_text,
)
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import AgentError, BadRequest, Timeout, TooLarge


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        (b"\xff\xfe", BadRequest, "UTF-8"),
        (b"turn on", BadRequest, "not JSON"),
        (b"[1, 2]", BadRequest, "JSON object"),
        (b"{}", BadRequest, "'text' is required"),
        (b'{"text": 3}', BadRequest, "'text' is required"),
        (b'{"text": "  "}', BadRequest, "empty"),
        (b'{"text": "x", "id": [1]}', BadRequest, "'id'"),
        (b'{"text": "x", "deadline_ms": -5}', BadRequest, "deadline_ms"),
        (b'{"text": "x", "deadline_ms": true}', BadRequest, "deadline_ms"),
        (b'{"text": "x", "reply_to": "a/+/b"}', BadRequest, "wildcard"),
        (b'{"text": "x", "reply_to": "a\\u0001b"}', BadRequest, "U+0001"),
        (b'{"text": "' + b"a" * 200 + b'"}', TooLarge, "limit is 100"),
    ],
)
def test_every_defect_has_its_code(payload: bytes, error: type, words: str) -> None:
    _, result = parse(payload, max_bytes=100)
    assert isinstance(result, error) and words in result.message


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"text": "x", "n": ' + b"9" * 5000 + b"}", "not usable JSON"),
        (b'{"text": "\\ud800"}', "lone surrogate"),
        (b'{"text": "x", "id": "\\ud800"}', "'id'"),
    ],
)
def test_hostile_json_is_a_bad_request_not_an_exception(payload: bytes, words: str) -> None:
    _, result = parse(payload, max_bytes=1_000_000)
    assert isinstance(result, BadRequest) and words in result.message


def test_valid_request_keeps_its_fields() -> None:
    envelope, req = parse(b'{"text": "lights off", "id": 7, "deadline_ms": 50, "reply_to": "me/inbox"}', 1000)
    assert not isinstance(req, AgentError)
    assert (req.text, req.id, req.deadline_ms, req.reply_to) == ("lights off", 7, 50, "me/inbox")
    assert envelope == Envelope(7, "me/inbox")


def test_the_address_of_an_invalid_request_is_still_read() -> None:
    assert parse(b'{"id": "a1", "reply_to": "me/x", "text": 5}', 1000)[0] == Envelope("a1", "me/x")
    assert parse(b'{"id": "a1", "reply_to": "me/#"}', 1000)[0] == Envelope("a1", None)
    assert parse(b'{"id": "\\ud800", "reply_to": "a\\u0000"}', 1000)[0] == Envelope()
    assert parse(b"\xff", 1000)[0] == Envelope()


def test_sensor_text_raw_and_path() -> None:
    assert sensor_text(b"  lights on \n", None, 100) == "lights on"
    assert sensor_text(b'{"a": {"b": ["x", "lights"]}}', "a.b.1", 100) == "lights"
    for payload, path, words in [
        (b'{"a": {}}', "a.b", "no field"),
        (b'{"a": 3}', "a", "not a string"),
        (b"   ", None, "empty"),
        (b'{"a": "\\udfff"}', "a", "lone surrogate"),
        (b"[" * 50_000, "a", "nested too deeply"),
    ]:
        with pytest.raises(BadRequest, match=words):
            sensor_text(payload, path, 1_000_000)
    with pytest.raises(TooLarge):
        sensor_text(b"x" * 200, None, 100)


def test_derived_ids_are_stable_per_message() -> None:
    a = message_id(Inbound("sensors/a", b"door open"))
    assert a == message_id(Inbound("sensors/a", b"door open")) != message_id(Inbound("sensors/b", b"door open"))
    by_corr = message_id(Inbound("r/m", b"x", correlation=b"k1"))
    assert by_corr == message_id(Inbound("r/m", b"other", correlation=b"k1")) != a


def test_one_body_for_results_and_errors() -> None:
    answer = Answer(Prediction("on", 0.3, [("on", 0.3)]), "local-fallback", "no_cloud", "low_confidence", local_ms=1)
    ok = ModelReply("r1", "m", answer, "7", 2.5).as_dict()
    facts = (ok["id"], ok["model"], ok["source"], ok["escalated"], ok["reason"], ok["trigger"])
    assert facts == ("r1", "m", "local-fallback", False, "no_cloud", "low_confidence")
    err = ModelReply("r2", "m", Timeout("late"), topic="sensors/x").as_dict()
    assert err == {"id": "r2", "model": "m", "error": {"code": "timeout", "message": "late"}, "topic": "sensors/x"}


def test_encode_never_fails() -> None:
    raw = encode(ModelReply("\ud800", "é", BadRequest("\udc00 é")))
    assert json.loads(raw) == {"id": "\ud800", "model": "é", "error": {"code": "bad_request", "message": "\udc00 é"}}


def test_a_command_reply_says_what_serves_now_or_why_not() -> None:
    done = CommandReply(7, CommandDone("pull", "m", "model m: 2 serves (was 1)")).as_dict()
    assert done == {"id": 7, "command": "pull", "model": "m", "ok": True, "message": "model m: 2 serves (was 1)"}
    refused = CommandReply(None, BadRequest("no")).as_dict()
    assert refused == {"id": None, "error": {"code": "bad_request", "message": "no"}}
