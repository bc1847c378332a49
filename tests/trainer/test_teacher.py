"""Feedback from many devices becomes training data: deduplicated, redacted, capped, new labels gated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer import teacher
from trainer.errors import DataError, UsageError


def feedback(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps({"local_label": "x", "reason": "low_confidence", **r}) + "\n" for r in rows))
    return path


def test_devices_merge_into_one_row_per_text_with_the_majority_label(tmp_path: Path) -> None:
    one = feedback(tmp_path / "a.jsonl", [{"text": "Lights  ON", "intent": "on"}, {"text": "rain?", "intent": "w"}])
    two = feedback(
        tmp_path / "b.jsonl",
        [
            {"text": "lights on", "intent": "on"},
            {"text": "lights on", "intent": "off"},
            {"text": "Rain?", "intent": "x"},  # rain?: w vs x, a tie: dropped
            {"text": "", "intent": "on"},
            {"text": "known text", "intent": "on"},
        ],
    )
    taught = teacher.collect([one, two], [], {"known text"}, None)
    assert {k: r["intent"] for k, r in taught.rows.items()} == {"lights on": "on"}
    assert taught.read == 7
    assert taught.dropped == {
        "devices disagree (tie)": 2,
        "duplicates": 2,
        "no text or no label": 1,
        "already in the data": 1,
    }


def test_redaction_masks_text_and_drops_the_entities_it_moved(tmp_path: Path) -> None:
    rows = [
        {
            "text": "call 555-1234 in the kitchen",
            "intent": "call",
            "entities": [{"type": "place", "value": "kitchen", "start": 21, "end": 28}],
        },
        {
            "text": "lights in the kitchen",
            "intent": "on",
            "entities": [
                {"type": "place", "value": "kitchen", "start": 14, "end": 21},
                {"type": "colour", "value": "lights", "start": 0, "end": 6},
                {"type": "place", "value": "hall", "start": 0, "end": 4},
            ],
        },
    ]
    taught = teacher.collect([feedback(tmp_path / "f.jsonl", rows)], [r"\d{3}-\d{4}"], set(), {"place"})
    texts = {r["text"]: r["entities"] for r in taught.rows.values()}
    assert texts["call [REDACTED] in the kitchen"] == []
    assert texts["lights in the kitchen"] == [{"type": "place", "value": "kitchen", "start": 14, "end": 21}]
    assert taught.dropped["entity of a type the model lacks"] == 1 and taught.dropped["entity not in its text"] == 1


def test_new_labels_need_enough_examples_and_every_label_is_capped(tmp_path: Path) -> None:
    rows = [{"text": f"play song {i}", "intent": "music"} for i in range(40)]
    rows += [{"text": f"order pizza {i}", "intent": "takeaway"} for i in range(5)]
    rows += [{"text": f"lights {i}", "intent": "on"} for i in range(30)]
    taught = teacher.collect([feedback(tmp_path / "f.jsonl", rows)], [], set(), None)
    plan = teacher.plan(taught, known=["on"], cap=10, min_new=20, holdout=0.25)
    assert plan.added == {"music": 40} and plan.pending == {"takeaway": 5}
    assert {r["intent"] for r in plan.later} == {"takeaway"}
    trained = [r["intent"] for r in plan.train]
    assert trained.count("music") == 10 and trained.count("on") == 10 and "takeaway" not in trained
    assert plan.capped["music"] > 0
    held, report = {r["text"] for r in plan.holdout}, {r["text"] for r in plan.report}
    assert held and report and not (held | report) & {r["text"] for r in plan.train} and not held & report
    again = teacher.plan(taught, known=["on"], cap=10, min_new=20, holdout=0.25)
    assert {r["text"] for r in again.report} == report  # the split is a function of the text


def test_a_file_that_is_not_feedback_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "a", "intent": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"f\.jsonl.*2"):
        teacher.collect([path], [], set(), None)


def test_rows_of_several_models_need_a_choice_and_redacted_test_texts_stay_out(tmp_path: Path) -> None:
    rows = [{"text": "lights on", "intent": "on", "model": "a"}, {"text": "call 555-1234", "intent": "c", "model": "b"}]
    path = feedback(tmp_path / "f.jsonl", rows)
    with pytest.raises(UsageError, match=r"several models \(a, b\): pass --model"):
        teacher.collect([path], [], set(), None)
    only_b = teacher.collect([path], [], set(), None, model="b")
    assert [r["text"] for r in only_b.rows.values()] == ["call 555-1234"] and only_b.dropped["another model's"] == 1
    test_texts = teacher.keys(["call 555-1234"], [r"\d{3}-\d{4}"])
    assert not teacher.collect([path], [r"\d{3}-\d{4}"], test_texts, None, model="b").rows
