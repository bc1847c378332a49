"""A registry cannot cost more than it says (issue 23): no content coding is decoded, every download has a
deadline and a minimum rate, and each refusal is one line."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.registry import Pace, latest, open_source
from tests.support.hostile import bomb, endless, gzip_bomb, hostile, trickle


def one_line(exc: pytest.ExceptionInfo[ArtifactError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300, text
    return text


def test_a_gzip_bomb_is_refused_before_a_byte_is_decoded() -> None:
    """Before: a 1.8 KB `latest.json` sent with `Content-Encoding: gzip, gzip` drove the agent to 3.27 GB."""
    assert len(bomb()) < 200_000  # made before measuring: the server shares this process
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with hostile(gzip_bomb) as url, pytest.raises(ArtifactError) as caught:
        latest(open_source(url), "m")
    assert "Content-Encoding 'gzip, gzip' (asked for identity)" in one_line(caught)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 32, grown_mb  # decoded, it would be 64 MiB at least


def test_a_trickle_is_refused_at_the_minimum_rate(tmp_path: Path) -> None:
    pace = Pace(deadline_s=60, min_bytes_per_s=1000, grace_s=0.5)
    started = time.monotonic()
    with hostile(trickle) as url, pytest.raises(ArtifactError) as caught:
        open_source(url, timeout_s=5, pace=pace).fetch("m/1/model.onnx", tmp_path / "f", 1 << 30, "0" * 64)
    assert "(a trickle)" in one_line(caught) and time.monotonic() - started < 5


def test_an_endless_answer_meets_its_deadline(tmp_path: Path) -> None:
    pace = Pace(deadline_s=1.0, min_bytes_per_s=0)
    started = time.monotonic()
    with hostile(endless) as url, pytest.raises(ArtifactError) as caught:
        open_source(url, timeout_s=5, pace=pace).read("m/latest.json", limit=1 << 40)
    assert "not done within 1 s" in one_line(caught) and time.monotonic() - started < 5
