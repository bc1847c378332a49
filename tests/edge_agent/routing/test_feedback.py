"""The feedback log: trainer-schema rows, redaction, bounded size, export."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

from edge_agent.contract.prediction import Entity, Prediction
from edge_agent.routing.feedback import MASK, FeedbackLog, record
from trainer import records


def test_row_has_the_trainer_schema_with_the_cloud_as_teacher(tmp_path: Path) -> None:
    text = "call bob@example.com about the kitchen lights"
    cloud = Prediction(
        "call", 1.0, entities=[Entity("person", "bob@example.com", 5, 20, 1), Entity("place", "kitchen", 31, 38, 1)]
    )
    local = Prediction("lights_on", 0.41)
    row = record(text, local, cloud, {"model": "m", "version": "3"}, [re.compile(r"[\w.]+@[\w.]+")])
    assert row["text"] == f"call {MASK} about the kitchen lights" and "bob" not in json.dumps(row)
    assert row["intent"] == "call" and row["local_label"] == "lights_on" and row["local_confidence"] == 0.41
    start = row["text"].index("kitchen")
    assert row["entities"] == [{"type": "place", "value": "kitchen", "start": start, "end": start + 7}]
    assert {"model", "version", "ts"} <= set(row)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (parsed,) = records.read(path)  # the trainer reads it as it is
    assert parsed.intent == "call" and parsed.entities[0].value == "kitchen"


def test_log_is_bounded_per_model_and_keeps_the_newest(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "fb", max_rows=10)
    for i in range(40):
        log.append("a", {"text": f"t{i}", "intent": "x"})
    log.append("b", {"text": "other", "intent": "y"})
    kept = [json.loads(line)["text"] for line in log.rows("a")]
    assert 10 <= len(kept) <= 11 and kept[-1] == "t39" and kept == sorted(kept, key=lambda t: int(t[1:]))
    assert len(list(log.rows())) == len(kept) + 1
    again = FeedbackLog(tmp_path / "fb", max_rows=10)  # a restart counts what is on disk
    for i in range(40, 45):
        again.append("a", {"text": f"t{i}", "intent": "x"})
    assert len(list(again.rows("a"))) <= 11


def test_line_separators_in_a_text_survive_a_trim(tmp_path: Path) -> None:
    """json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 raw; str.splitlines would cut rows there."""
    log = FeedbackLog(tmp_path / "fb", max_rows=4)
    texts = [f"t{i} line\u2028para\u2029next\x85end" for i in range(12)]
    for text in texts:
        log.append("a", {"text": text, "intent": "x"})
    kept = [json.loads(line)["text"] for line in log.rows("a")]
    assert len(kept) >= 4 and kept == texts[-len(kept) :]


def test_log_is_bounded_in_bytes_and_keeps_the_newest(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "fb", max_rows=100_000, max_bytes=4096)
    for i in range(300):
        assert log.append("a", {"text": f"t{i} " + "é" * 40, "intent": "x"})
        assert log.path("a").stat().st_size <= 4096
    kept = [json.loads(line)["text"].split()[0] for line in log.rows("a")]
    assert len(kept) > 10
    assert kept == [f"t{i}" for i in range(300 - len(kept), 300)]
    assert not log.append("a", {"text": "x" * 5000, "intent": "x"})  # can never fit: not kept, the bound holds
    assert log.path("a").stat().st_size <= 4096 and sum(1 for _ in log.rows("a")) == len(kept)


def test_a_trim_reads_the_tail_not_the_whole_file(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "fb", max_rows=200)  # a tail of a few read chunks
    row = json.dumps({"text": "a sensor said something long " * 30, "intent": "x"}) + "\n"
    (tmp_path / "fb").mkdir()
    log.path("a").write_text(row * 8000, encoding="utf-8")  # ~7 MB left by an older agent with a larger bound
    tracemalloc.start()
    try:
        log.append("a", {"text": "newest", "intent": "x"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = list(log.rows("a"))
    assert len(lines) == 200 and json.loads(lines[-1])["text"] == "newest" and set(lines[:-1]) == {row}
    assert peak < 1_000_000, f"peak {peak} bytes while trimming a {len(row) * 8000} byte file"
    assert sorted(p.name for p in (tmp_path / "fb").iterdir()) == ["a.jsonl"]


def test_a_link_planted_in_the_state_folder_is_never_followed(tmp_path: Path) -> None:
    """Before: the feedback log appended through a symlink to wherever it pointed (issue 23)."""
    import errno

    import pytest

    target = tmp_path / "etc-passwd"
    target.write_text("root:x:0:0\n")
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "m.jsonl").symlink_to(target)
    log = FeedbackLog(tmp_path / "feedback", max_rows=10)
    with pytest.raises(OSError) as caught:
        log.append("m", {"text": "hello"})
    assert caught.value.errno == errno.ELOOP and target.read_text() == "root:x:0:0\n"
