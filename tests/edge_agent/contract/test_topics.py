"""Topic rules: what may be published to, filter matching, the reply-topic policy."""

import pytest

from edge_agent.contract.topics import ReplyPolicy, matches, topic_problem


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("sensors/+/log", "sensors/a/log", True),
        ("sensors/+/log", "sensors/a/b/log", False),
        ("sensors/#", "sensors", True),
        ("sensors/#", "sensors/a/b", True),
        ("#", "$SYS/broker", False),
        ("a/b", "a/b/c", False),
        ("+/+", "a/b", True),
    ],
)
def test_matches(pattern: str, topic: str, match: bool) -> None:
    assert matches(pattern, topic) is match


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("", "empty"),
        ("a/#", "wildcard"),
        ("a/+/c", "wildcard"),
        ("a\x00b", "U+0000"),
        ("a\x01b", "U+0001"),
        ("a\x7fb", "U+007F"),
        ("a\x9fb", "U+009F"),
        ("a\ud800b", "U+D800"),
        ("a\ufdd0b", "U+FDD0"),
        ("a\ufffeb", "U+FFFE"),
        ("a\uffffb", "U+FFFF"),
        ("a\U0001fffeb", "U+1FFFE"),
        ("é" * 32768, "65535 bytes"),
    ],
)
def test_a_topic_mqtt_or_the_broker_refuses_names_why(topic: str, words: str) -> None:
    problem = topic_problem(topic)
    assert problem is not None and words in problem


def test_valid_topics() -> None:
    assert topic_problem("a/b") is None
    assert topic_problem("clients/é/ünïcode/🙂") is None
    assert topic_problem("x" * 65535) is None


def test_reply_policy_keeps_replies_out_of_the_fleet_api() -> None:
    policy = ReplyPolicy("edge-agent/+")
    assert policy.problem("me/replies") is None
    assert policy.problem("edge-agent/dev1/res/m") is None  # result topics are where replies belong
    for topic in ("edge-agent/dev1/status", "edge-agent/dev2/req/m", "edge-agent/dev1/cmd/models/pull", "edge-agent/x"):
        problem = policy.problem(topic)
        assert problem is not None and "agent API" in problem, topic
    assert ReplyPolicy("edge-agent/+", allow_own_prefix=True).problem("edge-agent/dev1/status") is None


def test_reply_policy_allow_list() -> None:
    policy = ReplyPolicy("edge-agent/+", ["clients/+/replies/#"])
    assert policy.problem("clients/c1/replies/x") is None
    problem = policy.problem("actuators/valve/open")
    assert problem is not None and "reply_topics" in problem
