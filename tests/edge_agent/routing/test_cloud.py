"""The cloud client against a real HTTP server on loopback that fails in every scripted way."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.sections import CloudSettings
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.prediction import Prediction
from edge_agent.routing.cloud import (
    RETRY_AFTER_MAX_S,
    CloudClient,
    CloudFailure,
    answer_schema,
    endpoint_name,
    retry_after_s,
)
from tests.support import cloud as fake_cloud
from tests.support.broker import free_port
from tests.support.cloud import (
    FIELDS,
    GARBAGE,
    HOLD,
    LABELS,
    REFUSALS,
    FakeCloud,
    answer,
    content,
    manifest,
    raw,
    refusal,
    status,
    trickle,
)


def settings(url: str, **kw: Any) -> CloudSettings:
    return CloudSettings(base_url=url, model="teacher", **{"backoff_s": 0.01, **kw})


def ask(
    cfg: CloudSettings, text: str = "is it raining", m: Manifest | None = None, budget_s: float = 5.0
) -> Prediction:
    async def go() -> Prediction:
        client = CloudClient(cfg, jitter=lambda: 0.0)
        try:
            return await client.ask(m or manifest(), text, time.monotonic() + budget_s)
        finally:
            await client.aclose()

    return asyncio.run(go())


def failure(cfg: CloudSettings, budget_s: float = 5.0, m: Manifest | None = None) -> tuple[CloudFailure, float]:
    start = time.monotonic()
    with pytest.raises(CloudFailure) as info:
        ask(cfg, m=m, budget_s=budget_s)
    return info.value, time.monotonic() - start


def ask_in_turn(cfg: CloudSettings, count: int, budget_s: float = 5.0) -> list[Prediction | CloudFailure]:
    """`count` asks through one client, one after the other: what it learns about the endpoint carries over."""

    async def go() -> list[Prediction | CloudFailure]:
        client = CloudClient(cfg, jitter=lambda: 0.0)
        got: list[Prediction | CloudFailure] = []
        try:
            for _ in range(count):
                try:
                    got.append(await client.ask(manifest(), "is it raining", time.monotonic() + budget_s))
                except CloudFailure as exc:
                    got.append(exc)
            return got
        finally:
            await client.aclose()

    return asyncio.run(go())


def formats(cloud: FakeCloud) -> list[str | None]:
    """The response_format type of each request the cloud saw (None: prompt only)."""
    return [seen.body.get("response_format", {}).get("type") for seen in cloud.seen]


@pytest.fixture()
def cloud() -> Any:
    with fake_cloud.serve() as c:
        yield c


def test_classify_with_json_schema_and_key_from_env(cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CLOUD_KEY", "sk-secret-123")
    cloud.then(answer("weather"))
    pred = ask(settings(cloud.base_url, api_key_env="TEST_CLOUD_KEY"))
    assert (pred.label, pred.confidence) == ("weather", 1.0)
    seen = cloud.seen[0]
    assert seen.headers["Authorization"] == "Bearer sk-secret-123"
    fmt = seen.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["properties"]["label"]["enum"] == LABELS
    assert seen.body["model"] == "teacher" and seen.body["temperature"] == 0
    assert all(label in seen.body["messages"][0]["content"] for label in LABELS)
    assert seen.text == "is it raining"


def test_key_from_file_and_no_key_means_no_header(cloud: FakeCloud, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    ask(settings(cloud.base_url, api_key_file=key))
    ask(settings(cloud.base_url))
    assert cloud.seen[0].headers["Authorization"] == "Bearer sk-file"
    assert "Authorization" not in cloud.seen[1].headers


def test_json_object_and_prompt_modes(cloud: FakeCloud) -> None:
    cloud.then(answer("weather"), content('```json\n{"label": "lights_on"}\n```'), content("lights_off"))
    assert ask(settings(cloud.base_url, response_format="json_object")).label == "weather"
    assert cloud.seen[0].body["response_format"] == {"type": "json_object", "schema": answer_schema(manifest())}
    assert ask(settings(cloud.base_url, response_format="prompt")).label == "lights_on"
    assert "response_format" not in cloud.seen[1].body
    assert ask(settings(cloud.base_url, response_format="prompt")).label == "lights_off"  # a bare label


def test_slow_cloud_gives_up_at_the_deadline(cloud: FakeCloud) -> None:
    cloud.then(HOLD)
    exc, took = failure(settings(cloud.base_url), budget_s=0.3)
    assert exc.reason == "cloud_timeout" and 0.25 < took < 1.0


def test_timeout_s_bounds_an_attempt_within_a_longer_deadline(cloud: FakeCloud) -> None:
    cloud.then(HOLD)
    exc, took = failure(settings(cloud.base_url, timeout_s=0.2, retries=0), budget_s=5)
    assert exc.reason == "cloud_timeout" and took < 1.0


def test_5xx_and_429_are_retried_then_answered(cloud: FakeCloud) -> None:
    cloud.then(status(500), status(429, retry_after="0"), status(503), answer("lights_on"))
    assert ask(settings(cloud.base_url, retries=3)).label == "lights_on"
    assert len(cloud.seen) == 4


def test_5xx_exhausts_retries(cloud: FakeCloud) -> None:
    cloud.default = status(502)
    exc, _ = failure(settings(cloud.base_url, retries=2))
    assert exc.reason == "cloud_error" and "502" in exc.message and len(cloud.seen) == 3


def test_other_4xx_is_not_retried(cloud: FakeCloud) -> None:
    cloud.default = status(401)
    exc, _ = failure(settings(cloud.base_url, retries=3))
    assert exc.reason == "cloud_error" and "401" in exc.message and len(cloud.seen) == 1


def test_retry_after_longer_than_the_deadline_fails_now(cloud: FakeCloud) -> None:
    cloud.then(status(429, retry_after="30"))
    exc, took = failure(settings(cloud.base_url), budget_s=1.0)
    assert exc.reason == "cloud_timeout" and took < 0.5 and len(cloud.seen) == 1


def test_garbage_json_is_a_failure_without_retry(cloud: FakeCloud) -> None:
    cloud.default = GARBAGE
    exc, _ = failure(settings(cloud.base_url))
    assert exc.reason == "cloud_error" and len(cloud.seen) == 1


@pytest.mark.parametrize(
    "text", ['{"label": "open_door"}', '{"label": "weather", "extra": 1}', "I think it is weather", '{"lbl": "x"}']
)
def test_answer_outside_the_label_set_is_invalid(cloud: FakeCloud, text: str) -> None:
    cloud.default = content(text)
    exc, _ = failure(settings(cloud.base_url, response_format="prompt"))
    assert exc.reason == "cloud_invalid"


def test_connection_refused_fails_fast() -> None:
    exc, took = failure(settings(f"http://127.0.0.1:{free_port()}/v1", retries=3))
    assert exc.reason == "cloud_error" and "ConnectError" in exc.message and took < 1.0


def test_extraction_validates_against_the_fields_schema(cloud: FakeCloud) -> None:
    m = manifest("extract", fields_schema=FIELDS)
    cloud.then(
        content(json.dumps({"device": "lamp", "level": 40})), content(json.dumps({"device": "lamp", "level": 400}))
    )
    pred = ask(settings(cloud.base_url), m=m)
    assert pred.fields == {"device": "lamp", "level": 40} and pred.label is None
    assert cloud.seen[0].body["response_format"]["json_schema"]["schema"] == FIELDS
    exc, _ = failure(settings(cloud.base_url), m=m)
    assert exc.reason == "cloud_invalid" and "above 100" in exc.message


def test_classify_extract_grounds_entities_in_the_text(cloud: FakeCloud) -> None:
    m = manifest("classify+extract", entity_types=["house_place"])
    said = {
        "label": "lights_on",
        "entities": [{"type": "house_place", "value": "Kitchen"}, {"type": "house_place", "value": "attic"}],
    }
    cloud.then(content(json.dumps(said)))
    pred = ask(settings(cloud.base_url), "lights on in the kitchen", m=m)
    assert pred.label == "lights_on"
    assert [(e.value, e.start, e.end) for e in pred.entities] == [("kitchen", 17, 24)]  # the attic was made up


def test_endpoint_name_hides_credentials() -> None:
    assert endpoint_name("https://user:pw@api.example.com/v1?key=x") == "https://api.example.com/v1"


@pytest.mark.parametrize("after", ["\xb2", "\xb9\xb2", "-1", "nan", "inf", "1e3", "0x10", "1.5.5", "soon", ""])
def test_unreadable_retry_after_falls_back_to_backoff(cloud: FakeCloud, after: str) -> None:
    cloud.then(status(429, retry_after=after), answer("lights_on"))
    assert ask(settings(cloud.base_url, retries=1), budget_s=1.0).label == "lights_on"
    assert len(cloud.seen) == 2


def test_retry_after_as_an_http_date(cloud: FakeCloud) -> None:
    cloud.then(status(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), answer("lights_on"))
    assert ask(settings(cloud.base_url, retries=1), budget_s=1.0).label == "lights_on"  # past: retry now
    cloud.then(status(429, retry_after="Thu, 31 Dec 2099 23:59:59 GMT"))
    exc, took = failure(settings(cloud.base_url, retries=1), budget_s=1.0)
    assert exc.reason == "cloud_timeout" and took < 0.5


def test_retry_after_is_read_strictly_and_capped() -> None:
    assert retry_after_s("9" * 400, now=0.0) == RETRY_AFTER_MAX_S
    assert retry_after_s("2.5", now=0.0) == 2.5
    assert retry_after_s("Thu, 01 Jan 1970 00:01:40 GMT", now=70.0) == 30.0
    assert retry_after_s("\xb2", now=0.0) is None


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5000


def test_a_text_json_cannot_encode_is_a_cloud_error_not_a_crash(cloud: FakeCloud) -> None:
    with pytest.raises(CloudFailure) as info:
        ask(settings(cloud.base_url), text="lights \ud800 on")  # a lone surrogate: httpx cannot encode it
    assert info.value.reason == "cloud_error" and "UnicodeEncodeError" in info.value.message
    assert cloud.seen == []


@pytest.mark.parametrize(
    "body",
    [
        DEEP.encode(),
        b'{"choices": [{"message": {"content": "x"}}], "usage": ' + DEEP.encode() + b"}",
        b'{"choices": [{"message": {"content": "x"}}], "n": ' + HUGE_INT.encode() + b"}",
        b"[]",
        b'"weather"',
        b"null",
        b'{"choices": "x"}',
        b'{"choices": [{"message": []}]}',
        b'{"choices": [{"message": {"content": 1}}]}',
        b"\xff\xfe not utf-8",
    ],
    ids=[
        "deep",
        "deep-usage",
        "huge-int",
        "list",
        "string",
        "null",
        "choices-str",
        "message-list",
        "content-int",
        "bytes",
    ],
)
def test_a_reply_that_is_no_chat_completion_is_a_cloud_error(cloud: FakeCloud, body: bytes) -> None:
    cloud.default = raw(body)
    exc, _ = failure(settings(cloud.base_url))
    assert exc.reason == "cloud_error" and exc.message and len(cloud.seen) == 1


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        '{"label": ' + DEEP + "}",
        '{"label": "weather", "n": ' + HUGE_INT + "}",
        HUGE_INT,
        "[1, 2]",
        "null",
        '{"label": "weather\\ud800"}',
    ],
    ids=["deep", "deep-label", "huge-int-key", "huge-int", "list", "null", "surrogate"],
)
def test_an_answer_that_cannot_be_read_is_invalid(cloud: FakeCloud, text: str) -> None:
    cloud.default = content(text)
    exc, _ = failure(settings(cloud.base_url, response_format="prompt"))
    assert exc.reason == "cloud_invalid" and exc.message


def test_an_extracted_field_that_is_no_unicode_is_invalid(cloud: FakeCloud) -> None:
    cloud.default = content('{"device": "lamp\\ud800", "level": 40}')  # would break the reply's UTF-8 later
    exc, _ = failure(settings(cloud.base_url), m=manifest("extract", fields_schema=FIELDS))
    assert exc.reason == "cloud_invalid"


def test_a_trickling_reply_ends_at_timeout_s(cloud: FakeCloud) -> None:
    cloud.then(trickle("weather", every_s=0.02))  # ~3 s for the whole body; each byte resets httpx's read timeout
    exc, took = failure(settings(cloud.base_url, timeout_s=0.5, retries=0), budget_s=10)
    assert exc.reason == "cloud_timeout" and took < 1.5


def test_auto_is_the_default() -> None:
    assert CloudSettings(base_url="https://api.example.com/v1", model="m").response_format == "auto"


@pytest.mark.parametrize("server", list(REFUSALS))
def test_auto_falls_back_to_json_object_and_remembers_it(cloud: FakeCloud, server: str) -> None:
    cloud.then(refusal(server))
    got = ask_in_turn(settings(cloud.base_url, retries=0), 2)
    assert [getattr(p, "label", p) for p in got] == ["weather", "weather"]
    assert formats(cloud) == ["json_schema", "json_object", "json_object"]  # the second ask goes straight there
    assert cloud.seen[1].body["response_format"]["schema"] == answer_schema(manifest())


def test_auto_falls_back_to_prompt_at_once_without_backoff(cloud: FakeCloud) -> None:
    cloud.then(refusal("openai"), refusal("fastapi"), content("lights_off"))
    got = ask_in_turn(settings(cloud.base_url, retries=0, backoff_s=30), 2, budget_s=2)  # a backoff would time out
    assert [getattr(p, "label", p) for p in got] == ["lights_off", "weather"]
    assert formats(cloud) == ["json_schema", "json_object", None, None]


def test_a_refusal_in_prompt_mode_is_a_cloud_error_and_not_retried(cloud: FakeCloud) -> None:
    cloud.then(refusal("openai"), refusal("vllm"), status(400))
    exc, _ = failure(settings(cloud.base_url, retries=3))
    assert exc.reason == "cloud_error" and "400" in exc.message
    assert formats(cloud) == ["json_schema", "json_object", None]


def test_a_refused_explicit_format_is_a_cloud_error_and_not_retried(cloud: FakeCloud) -> None:
    cloud.default = refusal("llama-cpp-python")  # a 500, which would otherwise be retried
    exc, _ = failure(settings(cloud.base_url, response_format="json_schema", retries=2))
    assert exc.reason == "cloud_error" and "response_format" in exc.message and len(cloud.seen) == 1


def test_errors_that_do_not_name_the_format_keep_it(cloud: FakeCloud) -> None:
    too_long = b'{"error": {"message": "maximum context length exceeded", "param": "messages"}}'
    cloud.then(status(400, body=too_long), status(503), answer("lights_on"))
    got = ask_in_turn(settings(cloud.base_url, retries=1), 2)
    assert isinstance(got[0], CloudFailure) and got[0].reason == "cloud_error"
    assert getattr(got[1], "label", None) == "lights_on"  # the 503 was retried, in the same format
    assert formats(cloud) == ["json_schema", "json_schema", "json_schema"]
