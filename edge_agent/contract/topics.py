"""MQTT topic rules in one place: what may be published to, filter matching, and the reply-topic policy.

A reply topic comes from a client (`reply_to`, the MQTT 5 response topic), so it is hostile input:
a broker drops the whole connection of a client that publishes to a malformed topic, and a
well-formed one may still point at the agent's own status, another device's requests or an actuator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_TOPIC_BYTES = 65535


def _forbidden(c: str) -> bool:
    """Code points MQTT 5 (1.5.4) forbids or that brokers refuse: controls, non-characters, surrogates."""
    n = ord(c)
    return n <= 0x1F or 0x7F <= n <= 0x9F or 0xD800 <= n <= 0xDFFF or 0xFDD0 <= n <= 0xFDEF or (n & 0xFFFE) == 0xFFFE


def topic_problem(topic: str) -> str | None:
    """Why a topic cannot be published to (None: it can): empty, wildcards, bad code points, too long."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "contains a wildcard (+ or #)"
    bad = next((c for c in topic if _forbidden(c)), None)
    if bad is not None:
        return f"contains the code point U+{ord(bad):04X}, which MQTT forbids"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    return None


def check_filter(value: str) -> str:
    """A valid MQTT topic filter (wildcards only as whole levels, # last), or ValueError (for settings)."""
    levels = value.split("/")
    if not value or any(
        ("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+") for i, lv in enumerate(levels)
    ):
        raise ValueError(f"invalid topic filter {value!r}")
    return value


def shared(group: str | None, topic_filter: str) -> str:
    """The filter as an MQTT 5 shared subscription of `group` ($share/{group}/{filter}): the broker hands
    each message to one member of the group. None: an ordinary subscription."""
    return topic_filter if group is None else f"$share/{group}/{topic_filter}"


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith("$share/")


def matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (+ one level, # the rest); $-topics never match a leading wildcard."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    pat, top = pattern.split("/"), topic.split("/")
    for i, level in enumerate(pat):
        if level == "#":
            return True
        if i >= len(top) or (level != "+" and level != top[i]):
            return False
    return len(pat) == len(top)


@dataclass(frozen=True)
class ReplyPolicy:
    """Where a client may have its replies published: a valid topic; never the fleet's own API (any
    device's requests, status or commands: `fleet` is the prefix filter, e.g. `edge-agent/+`) unless
    allowed, its result topics excepted; and inside the allow-list when the deployment has one."""

    fleet: str
    allow: Sequence[str] = ()
    allow_own_prefix: bool = False

    def problem(self, topic: str) -> str | None:
        """Why replies may not go to `topic` (None: they may)."""
        bad = topic_problem(topic)
        if bad is not None:
            return f"reply topic {bad}"
        if not self.allow_own_prefix and self._protected(topic):
            return f"reply topic is inside the agent API ({self.fleet}/...)"
        if self.allow and not any(matches(f, topic) for f in self.allow):
            return "reply topic is not in this device's reply_topics"
        return None

    def _protected(self, topic: str) -> bool:
        return matches(f"{self.fleet}/#", topic) and not matches(f"{self.fleet}/res/#", topic)
