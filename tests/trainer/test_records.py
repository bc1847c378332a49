"""Bad labelled data ends with exit 65 and one line naming file and line; no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.errors import EX_DATAERR
from trainer.records import read

GOOD = [
    {
        "text": "turn on the kitchen lights",
        "intent": "lights_on",
        "entities": [{"type": "room", "value": "kitchen", "start": 12, "end": 19}],
    },
    {"text": "what is the weather", "intent": "weather", "entities": []},
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def good_lines() -> list[str]:
    return [json.dumps(r) for r in GOOD]


def run_data(tmp_path: Path, train: list[str], dev: list[str] | None = None) -> int:
    train_path = write(tmp_path / "train.jsonl", train)
    dev_path = write(tmp_path / "dev.jsonl", good_lines() if dev is None else dev)
    return main(["data", "--train", str(train_path), "--dev", str(dev_path), "--out", str(tmp_path / "out")])


BAD_TRAIN = {
    "invalid json": ([*good_lines(), '{"text": "oops", '], "train.jsonl:3: invalid JSON"),
    "missing intent": ([good_lines()[0], json.dumps({"text": "hello"})], "train.jsonl:2: missing field `intent`"),
    "offsets do not match": (
        [good_lines()[1], json.dumps({**GOOD[0], "entities": [{**GOOD[0]["entities"][0], "start": 11}]})],
        "train.jsonl:2: entity 'room': text[11:19]",
    ),
    "offsets outside text": (
        [json.dumps({**GOOD[0], "entities": [{**GOOD[0]["entities"][0], "end": 99}]})],
        "train.jsonl:1: entity 'room': offsets 12..99 outside the text",
    ),
    "entity missing value": (
        [json.dumps({**GOOD[0], "entities": [{"type": "room", "start": 12, "end": 19}]})],
        "train.jsonl:1: missing field `value`",
    ),
    "not an object": ([good_lines()[0], "[1, 2]"], "train.jsonl:2: expected a JSON object"),
    "empty file": ([], "train.jsonl:1: file is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_train_file_exits_65_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, expected = BAD_TRAIN[case]
    assert run_data(tmp_path, lines) == EX_DATAERR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expected in err


def test_label_seen_only_in_dev_names_the_dev_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = [*good_lines(), json.dumps({"text": "play jazz", "intent": "music", "entities": []})]
    assert run_data(tmp_path, good_lines(), dev) == EX_DATAERR
    err = capsys.readouterr().err
    assert "dev.jsonl:3: intent 'music' does not occur in" in err and err.count("\n") == 1


def test_entity_type_seen_only_in_dev_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = [
        json.dumps(
            {
                "text": "lights on at noon",
                "intent": "lights_on",
                "entities": [{"type": "time", "value": "noon", "start": 13, "end": 17}],
            }
        )
    ]
    assert run_data(tmp_path, good_lines(), dev) == EX_DATAERR
    assert "dev.jsonl:1: entity type 'time' does not occur in" in capsys.readouterr().err


def test_missing_file_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "data",
            "--train",
            str(tmp_path / "nope.jsonl"),
            "--dev",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == EX_DATAERR
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--train", "x.jsonl"])
    assert exc.value.code == 2
    assert main(["finetune", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not the output of `data`" in capsys.readouterr().err


def test_good_data_writes_labels_encoded_splits_and_metadata(tmp_path: Path) -> None:
    assert run_data(tmp_path, good_lines()) == 0
    out = tmp_path / "out"
    labels = json.loads((out / "labels.json").read_text())
    assert labels["intents"] == ["lights_on", "weather"]
    assert labels["tags"] == ["O", "B-room", "I-room"]
    meta = json.loads((out / "stage.json").read_text())
    assert meta["stage"] == "data" and len(meta["inputs"]["train"]["sha256"]) == 64
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["tags"][0] == 0 and first["tags"][-1] == 0  # [CLS] and [SEP] are O
    assert labels["tags"][first["tags"][4]] == "B-room"


def test_a_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps({"text": "lights on", "intent": "on"}), json.dumps({"text": "lights off", "intent": "off"})]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    assert [r.intent for r in read(path)] == ["on", "off"]
