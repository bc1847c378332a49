"""`edge-trainer improve` on a tiny encoder: the feedback teaches a label the model lacked, the candidate
is published with its comparison; a cold start makes a first model from feedback alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import manifest as mf
from tests.trainer.encoder.test_build import FAST
from trainer.cli import main
from trainer.encoder import base as encoder_base
from trainer.records import builtin_records

WEATHER = ["what is the weather like", "will it rain today", "how warm is it outside", "is it sunny", "any snow"]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model trained without `weather`, with the feedback its devices collected about it."""
    root = tmp_path_factory.mktemp("improve")
    lights = [r for r in builtin_records() if r["intent"] != "weather"]
    train = jsonl(root / "train.jsonl", lights)
    base = encoder_base.make_tiny(root / "base")
    out = root / "artifacts" / "lights"
    args = ["build", "--train", str(train), "--dev", str(train), "--name", "lights", "--out", str(out)]
    assert main([*args, "--base", str(base), "--max-tokens", "32", "--version", "1", *FAST]) == 0
    taught = [{"text": f"{t} {suffix}", "intent": "weather"} for t in WEATHER for suffix in ("", "now", "please", "?")]
    taught += [{"text": "wake me at six", "intent": "alarm_set"}]  # one example: kept for later
    taught += [{"text": "lights on in the garage", "intent": "lights_on", "local_label": "lights_off"}]
    device_a = jsonl(root / "a.jsonl", taught[::2])
    device_b = jsonl(root / "b.jsonl", taught[1::2] + taught[:3])  # some texts seen by both devices
    return {"root": root, "train": train, "base": base, "artifact": out, "feedback": [device_a, device_b]}


def test_improve_adds_the_label_the_cloud_taught_and_compares(
    serving: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = serving["root"], serving["root"] / "candidate"
    args = ["improve", "--artifact", str(serving["artifact"]), "--train", str(serving["train"])]
    args += [
        "--dev",
        str(serving["train"]),
        "--feedback",
        *map(str, serving["feedback"]),
        "--base",
        str(serving["base"]),
    ]
    args += ["--name", "lights", "--out", str(out), "--version", "2", "--min-new-label", "5", "--max-tokens", "32"]
    assert main([*args, "--holdout", "0.25", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "labels added ['weather']" in printed and "kept for later ['alarm_set']" in printed
    manifest = mf.load(out)
    assert manifest.version == "2" and manifest.labels == ["lights_off", "lights_on", "weather"]
    assert manifest.ood is not None and "improve.json" in [f.path for f in manifest.files]
    report = json.loads((out / "improve.json").read_text())
    assert report["current"] == "lights 1" and report["warm_start"].endswith("finetune")
    assert report["feedback"]["rows_read"] == 25 and report["feedback"]["dropped"]["duplicates"] == 3
    assert report["labels"] == {"added": {"weather": 20}, "kept_for_later": {"alarm_set": 1}, "min_examples": 5}
    held = report["evaluated"]["feedback_holdout"]
    assert held["examples"] == report["feedback"]["held_out_for_the_report"] > 0
    assert held["before"]["labels_unknown_to_model"] > 0 and held["after"]["labels_unknown_to_model"] == 0
    assert held["per_label"]["weather"]["before"] == 0.0
    assert "dev" in report["evaluated"]
    stages = json.loads((root / "artifacts" / ".work-lights" / "finetune" / "stage.json").read_text())
    assert "init" in json.loads((out.parent / ".work-lights" / "finetune" / "stage.json").read_text())["params"]
    assert "init" not in stages["params"]  # the serving model's own build started from the base
    pending = (out.parent / ".work-lights" / "improve" / "pending.jsonl").read_text()
    assert "wake me at six" in pending


def test_a_cold_start_makes_a_first_model_from_feedback_alone(serving: dict[str, Path]) -> None:
    out = serving["root"] / "first"
    rows = [{"text": f"{r['text']} now", "intent": r["intent"]} for r in builtin_records()]
    feedback = jsonl(serving["root"] / "cold.jsonl", rows)
    args = [
        "improve",
        "--feedback",
        str(feedback),
        "--name",
        "first",
        "--out",
        str(out),
        "--base",
        str(serving["base"]),
    ]
    assert main([*args, "--min-new-label", "3", "--max-tokens", "32", *FAST]) == 0
    manifest = mf.load(out)
    assert manifest.labels == ["lights_off", "lights_on", "weather"]
    report = json.loads((out / "improve.json").read_text())
    assert report["current"] is None and report["warm_start"] is None
    assert report["evaluated"]["feedback_holdout"]["before"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--artifact", "ARTIFACT"], "--train and --dev"),
        (["--holdout", "1.5"], "--holdout"),
    ],
)
def test_improve_refuses_bad_options_in_one_line(
    serving: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    extra = [str(serving["artifact"]) if e == "ARTIFACT" else e for e in extra]
    args = ["improve", "--feedback", str(serving["feedback"][0]), "--name", "x", "--out", str(serving["root"] / "x")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_candidate_may_not_overwrite_the_serving_artifact(
    serving: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["improve", "--artifact", str(serving["artifact"]), "--train", str(serving["train"])]
    args += ["--dev", str(serving["train"]), "--feedback", str(serving["feedback"][0]), "--name", "lights"]
    assert main([*args, "--out", str(serving["artifact"])]) == 2
    assert "--out is the serving artifact" in capsys.readouterr().err
    assert main([*args, "--out", str(serving["artifact"].parent / "lights-2")]) == 2  # same .work-lights
    assert "holds the serving model's stages" in capsys.readouterr().err
