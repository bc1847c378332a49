import pytest

from edge_agent.errors import BadRequest, TooLarge
from edge_agent.handler import sensor_text, topic_matches


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
def test_topic_matches(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


def test_sensor_text_raw_and_path() -> None:
    assert sensor_text(b"  lights on \n", None, 100) == "lights on"
    assert sensor_text(b'{"a": {"b": ["x", "lights"]}}', "a.b.1", 100) == "lights"
    with pytest.raises(BadRequest, match="no field"):
        sensor_text(b'{"a": {}}', "a.b", 100)
    with pytest.raises(BadRequest, match="not a string"):
        sensor_text(b'{"a": 3}', "a", 100)
    with pytest.raises(BadRequest, match="empty"):
        sensor_text(b"   ", None, 100)
    with pytest.raises(TooLarge):
        sensor_text(b"x" * 200, None, 100)
