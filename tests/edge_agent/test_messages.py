import pytest

from edge_agent.errors import BadRequest, TooLarge
from edge_agent.messages import Envelope, parse, peek, valid_topic


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
        (b'{"text": "x", "reply_to": "a/+/b"}', BadRequest, "wildcards"),
        (b'{"text": "' + b"a" * 200 + b'"}', TooLarge, "limit is 100"),
    ],
)
def test_every_defect_has_its_code(payload: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        parse(payload, max_bytes=100)


def test_valid_request_keeps_its_fields() -> None:
    req = parse(b'{"text": "lights off", "id": 7, "deadline_ms": 50, "reply_to": "me/inbox"}', 1000)
    assert (req.text, req.id, req.deadline_ms, req.reply_to) == ("lights off", 7, 50, "me/inbox")


def test_peek_finds_the_address_of_an_invalid_request() -> None:
    assert peek(b'{"id": "a1", "reply_to": "me/x", "text": 5}', 1000) == Envelope("a1", "me/x")
    assert peek(b'{"id": "a1", "reply_to": "me/#"}', 1000) == Envelope("a1", None)
    assert peek(b"\xff", 1000) == Envelope()


def test_valid_topic() -> None:
    assert valid_topic("a/b")
    assert not valid_topic("")
    assert not valid_topic("a/#")
    assert not valid_topic("a/+/c")
