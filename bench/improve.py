"""The improvement loop end to end on a simulated drift, with real processes. Run by hand:

    .venv/bin/python bench/improve.py [--cloud-accuracy 0.95] [--min-escalated 500] [--skip-cold]

The shipped model is the 56-intent HWU64 model bench/quality.py builds (8 intents held out of its
training; built here if missing). Traffic with those 8 intents goes through a running agent (mosquitto,
`edge-agent run`) whose cloud is a loopback stand-in answering with the dataset's gold label at a stated
accuracy: a SIMULATION of a teacher, not a cloud LLM. The agent's feedback is exported, `edge-trainer
improve` retrains, the candidate runs in shadow on fresh traffic (HWU64 dev, then SLURP dev texts unseen
in HWU64) until the models.yaml rule decides, and the HWU64 test split is replayed before and after.
Then a cold start: a device with no model answers everything through the cloud; one improve cycle on
what it collected makes a first local model, and the test split is replayed again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mqtt_peer import Peer, mosquitto  # noqa: E402  (run as a script)
from bench.overhead import start_agent, timed  # noqa: E402
from bench.quality import HELD_OUT, HWU, _split, build  # noqa: E402
from bench.teacher import gold_teacher  # noqa: E402
from edge_agent.contract import manifest as mf  # noqa: E402
from trainer.encoder.recipe import EncoderRecipe  # noqa: E402

SLURP_DEV = HWU.parent / "slurp" / "dev.jsonl"
MODEL = "intents"


def main() -> int:
    args = parse_args()
    out = args.out
    work = out / "improve"
    work.mkdir(parents=True, exist_ok=True)
    shipped = out / "hwu64-known"
    if not (shipped / mf.MANIFEST).is_file():
        print("building the shipped 56-intent model (bench/quality.py's hwu64-known) ...", file=sys.stderr)
        split = {name: _split(out, name) for name in ("train", "dev", "test")}
        build(
            out,
            "hwu64-known",
            split["train"][0],
            split["dev"][0],
            EncoderRecipe(),
            False,
            split["test"][0],
            split["dev"][1],
        )
    for name in ("train", "dev", "test"):
        _split(out, name)
    test = rows(HWU / "test.jsonl")
    labels = sorted({r["intent"] for r in rows(HWU / "train.jsonl")})
    sources = (SLURP_DEV, HWU / "train.jsonl", HWU / "dev.jsonl", HWU / "test.jsonl")  # HWU64's record wins
    gold = {r["text"]: r for path in sources for r in rows(path)}
    result: dict[str, Any] = {"cloud_accuracy": args.cloud_accuracy, "held_out": HELD_OUT}
    with (
        tempfile.TemporaryDirectory() as tmp,
        mosquitto(Path(tmp)) as port,
        gold_teacher(gold, labels, args.cloud_accuracy, args.seed) as cloud,
    ):
        env = {
            "EDGE_AGENT_CLOUD__BASE_URL": cloud,
            "EDGE_AGENT_CLOUD__MODEL": "teacher",
            "EDGE_AGENT_CLOUD__RETRIES": "0",
        }
        drift(args, work, shipped, port, env, test, result)
        if not args.skip_cold:
            cold_start(args, work, labels, port, env, test, result)
        elif args.reuse and (work / "improve.json").is_file():  # the last run's cold start, kept
            last = json.loads((work / "improve.json").read_text())
            result.update({k: v for k, v in last.items() if k.startswith("cold_")})
    (work / "improve.json").write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--cloud-accuracy", type=float, default=0.95, help="the simulated teacher's accuracy")
    parser.add_argument("--min-escalated", type=int, default=500, help="the promotion rule's minimum")
    parser.add_argument("--collect", type=int, default=1000, help="known-intent train texts mixed into collection")
    parser.add_argument("--cold", type=int, default=3000, help="train texts a cold device answers through the cloud")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep the collection and candidate of the last run")
    return parser.parse_args()


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the drift: 8 intents the shipped model never saw -------------------------------------------------
def drift(
    args: argparse.Namespace,
    work: Path,
    shipped: Path,
    port: int,
    env: dict[str, str],
    test: list[dict[str, Any]],
    result: dict[str, Any],
) -> None:
    train = rows(HWU / "train.jsonl")
    rng = random.Random(args.seed)
    traffic = [r for r in train if r["intent"] in HELD_OUT] + rng.sample(
        [r for r in train if r["intent"] not in HELD_OUT], args.collect
    )
    rng.shuffle(traffic)
    entry: dict[str, Any] = {"name": MODEL, "path": str(shipped), "cloud_labels": HELD_OUT}
    candidate, saved = work / "candidate", work / "drift-collected.json"
    if args.reuse and saved.is_file() and (candidate / mf.MANIFEST).is_file():
        result.update(json.loads(saved.read_text()))
    else:
        result.update(collect(args, work, shipped, entry, port, env, traffic, test, candidate))
        saved.write_text(json.dumps({k: result[k] for k in REUSED}, indent=2) + "\n")
    rule = {"min_escalated": args.min_escalated, "min_gain_pt": 1.0, "max_p99_ratio": 1.2, "max_error_increase": 0.0}
    entry = {**entry, "candidate": {"path": str(candidate), "shadow": 1.0, "promote": rule}}
    shadow_traffic = rows(HWU / "dev.jsonl") + [
        {"text": r["text"], "intent": r["intent"]} for r in rows(SLURP_DEV) if not r["seen_in_hwu64_train_or_dev"]
    ]
    with agent(work / "device-b", [entry], port, env):
        say(f"shadow: up to {len(shadow_traffic)} requests until the rule decides")
        result["trial"] = shadow(port, shadow_traffic)
        say(f"trial: {result['trial'].get('decision')}: {result['trial'].get('why')}")
        say("after: HWU64 test through whatever serves now")
        result["after"] = score(replay(port, test), test)


REUSED = ("before", "collected", "improve_stdout", "improve_minutes", "improve_report")


def collect(
    args: argparse.Namespace,
    work: Path,
    shipped: Path,
    entry: dict[str, Any],
    port: int,
    env: dict[str, str],
    traffic: list[dict[str, Any]],
    test: list[dict[str, Any]],
    candidate: Path,
) -> dict[str, Any]:
    """The shipped model meets the drift: collection, feedback export, the test split before, improve."""
    result: dict[str, Any] = {}
    with agent(work / "device-a", [entry], port, env) as state:
        new = sum(r["intent"] in HELD_OUT for r in traffic)
        say(f"collection: {len(traffic)} requests ({new} of the 8 new intents)")
        collected = replay(port, traffic)
        feedback = export(state, work / "feedback-a.jsonl", sum(r["source"] == "cloud" for r in collected))
        say("before: HWU64 test through the shipped model")
        result["before"] = score(replay(port, test), test)
    result["collected"] = {"requests": len(traffic), "feedback_rows": feedback}
    say("edge-trainer improve (warm start from the shipped model)")
    started = time.monotonic()
    improve = [
        "improve", "--artifact", str(shipped), "--train", str(args.out / "known-train.jsonl"),
        "--dev", str(args.out / "known-dev.jsonl"), "--feedback", str(work / "feedback-a.jsonl"),
        "--test", str(HWU / "test.jsonl"), "--name", "hwu64-known", "--out", str(candidate),
    ]  # fmt: skip
    result["improve_stdout"] = trainer(improve)
    result["improve_minutes"] = round((time.monotonic() - started) / 60, 1)
    result["improve_report"] = json.loads((candidate / "improve.json").read_text())
    return result


def shadow(port: int, traffic: list[dict[str, Any]], chunk: int = 100) -> dict[str, Any]:
    watcher = Peer(port)
    watcher.subscribe("edge-agent/bench/status")
    trial: dict[str, Any] = {}
    try:
        for start in range(0, len(traffic), chunk):
            replay(port, traffic[start : start + chunk])
            trial = latest_trial(watcher) or trial
            if trial.get("decision"):
                trial["requests"] = start + chunk
                break
    finally:
        watcher.close()
    return trial


def latest_trial(watcher: Peer) -> dict[str, Any] | None:
    """The newest status the agent published (retained; it publishes on each change and every 100 shadowed)."""
    found = None
    while True:
        try:
            status = watcher.next("edge-agent/bench/status", timeout=0.5)
        except TimeoutError:
            return found
        found = status.get("rollout", {}).get(MODEL, {}).get("candidate") or found


# -- the cold start: no model at all --------------------------------------------------------------
def cold_start(
    args: argparse.Namespace,
    work: Path,
    labels: list[str],
    port: int,
    env: dict[str, str],
    test: list[dict[str, Any]],
    result: dict[str, Any],
) -> None:
    traffic = random.Random(args.seed + 1).sample(rows(HWU / "train.jsonl"), args.cold)
    entry = {"name": MODEL, "cloud_labels": labels}
    with agent(work / "device-cold", [entry], port, env) as state:
        say(f"cold start: {len(traffic)} requests, all through the cloud")
        collected = replay(port, traffic)
        export(state, work / "feedback-cold.jsonl", sum(r["source"] == "cloud" for r in collected))
        result["cold_before"] = score(replay(port, test), test)
    first = work / "first"
    say("edge-trainer improve (cold: from the base, on the feedback alone)")
    started = time.monotonic()
    cold = ["improve", "--feedback", str(work / "feedback-cold.jsonl"), "--test", str(HWU / "test.jsonl")]
    # the first model needs to be as good as the cloud it takes over from, not better: its dev labels are
    # the teacher's own (wrong 1 - accuracy of the time), so 98 % measured on them is out of reach
    target = ["--target-accuracy", str(args.cloud_accuracy)]
    result["cold_stdout"] = trainer([*cold, *target, "--name", "hwu64-first", "--out", str(first)])
    result["cold_minutes"] = round((time.monotonic() - started) / 60, 1)
    with agent(work / "device-cold-2", [{**entry, "path": str(first)}], port, env):
        result["cold_after"] = score(replay(port, test), test)


# -- parts ----------------------------------------------------------------------------------------
@contextmanager
def agent(folder: Path, models: list[dict[str, Any]], port: int, env: dict[str, str]) -> Iterator[Path]:
    """`edge-agent run` (device `bench`) on `models`, its state in `folder/state`, stopped after the block."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    state = folder / "state"
    shutil.rmtree(state, ignore_errors=True)  # a fresh device: an earlier run's store would skip the trial
    proc, _ = start_agent(folder / "models.yaml", port, folder, 2, env={**env, "EDGE_AGENT_STATE_DIR": str(state)})
    try:
        yield state
    finally:
        proc.terminate()
        proc.wait(30)


def replay(port: int, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [reply for _, reply in timed(port, f"edge-agent/bench/req/{MODEL}", [r["text"] for r in records])]


def export(state: Path, path: Path, expected: int) -> int:
    """`edge-agent feedback export`, once the agent has written every cloud answer (they go to disk off
    the reply's path, so the last few may trail the replies by milliseconds)."""
    log = state / "feedback" / f"{MODEL}.jsonl"
    end = time.monotonic() + 30
    while (not log.is_file() or log.read_text().count("\n") < expected) and time.monotonic() < end:
        time.sleep(0.05)  # polling a file another process appends to, bounded
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(state)}
    cmd = [sys.executable, "-m", "edge_agent", "feedback", "export", "--model", MODEL, "--out", str(path)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path.read_text().count("\n")


def trainer(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"edge-trainer {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def score(replies: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Escalation share on the 8 intents, reply accuracy on the others, cloud calls per 1,000."""

    def part(keep: list[bool]) -> dict[str, Any]:
        pairs = [(r, g) for r, g, k in zip(replies, records, keep, strict=True) if k]
        n = max(1, len(pairs))
        local = [(r, g) for r, g in pairs if r.get("source") != "cloud"]
        return {
            "n": len(pairs),
            "escalated": round(sum(r.get("source") == "cloud" for r, _ in pairs) / n, 4),
            "accuracy": round(sum(r.get("label") == g["intent"] for r, g in pairs) / n, 4),
            "local_accuracy": round(sum(r.get("label") == g["intent"] for r, g in local) / max(1, len(local)), 4),
        }

    new = [g["intent"] in HELD_OUT for g in records]
    return {
        "held_out": part(new),
        "others": part([not x for x in new]),
        "all": part([True] * len(records)),
        "errors": sum("error" in r for r in replies),
        "cloud_calls_per_1000": round(1000 * sum(r.get("source") == "cloud" for r in replies) / len(replies), 1),
    }


def print_tables(r: dict[str, Any]) -> None:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731  (local formatting shorthand)

    def row(*cells: object) -> None:
        print("| " + " | ".join(str(c) for c in cells) + " |")

    b, a = r["before"], r["after"]
    print(f"simulated teacher: gold label at {pct(r['cloud_accuracy'])} accuracy (not a cloud LLM)\n")
    row("HWU64 test through the agent", "before", "after", "goal")
    row("---", "---:", "---:", "---")
    new, old = f"8 new intents (n={b['held_out']['n']})", f"other 56 intents (n={b['others']['n']})"
    row(f"{new}: escalated", pct(b["held_out"]["escalated"]), pct(a["held_out"]["escalated"]), ">= 90% -> <= 15%")
    row(f"{new}: reply accuracy", pct(b["held_out"]["accuracy"]), pct(a["held_out"]["accuracy"]), "")
    row(f"{old}: reply accuracy", pct(b["others"]["accuracy"]), pct(a["others"]["accuracy"]), "within 0.5 pt")
    row(f"{old}: escalated", pct(b["others"]["escalated"]), pct(a["others"]["escalated"]), "")
    row("cloud calls per 1,000 requests", b["cloud_calls_per_1000"], a["cloud_calls_per_1000"], "")
    row("error replies", b["errors"], a["errors"], "0")
    rep, got = r["improve_report"], r["collected"]
    added, later = sorted(rep["labels"]["added"]), sorted(rep["labels"]["kept_for_later"]) or "none"
    print(f"\nfeedback: {got['feedback_rows']} rows from {got['requests']} requests; labels added {added}; ")
    print(f"kept for later {later}; improve took {r['improve_minutes']} min")
    trial = r.get("trial", {})
    if trial:
        f, counts = trial.get("figures", {}), trial.get("counts", {})
        said = trial.get("decision") or "undecided"
        print(f"trial: {said} after {trial.get('requests', '?')} requests: {trial.get('why')}")
        agree = f"{pct(f.get('serving_cloud_agreement', 0))} -> {pct(f.get('candidate_cloud_agreement', 0))}"
        p99 = f"{f.get('serving_p99_ms')} / {f.get('candidate_p99_ms')} ms"
        print(f"  agreement with the cloud, serving -> candidate: {agree} on {counts.get('escalated')}; p99 {p99}")
    if "cold_after" in r:
        cb, ca = r["cold_before"], r["cold_after"]
        print()
        row("cold start, HWU64 test", "before (no model)", "after one improve")
        row("---", "---:", "---:")
        row("answered on the device", pct(1 - cb["all"]["escalated"]), pct(1 - ca["all"]["escalated"]))
        row("accuracy of the device's own answers", "-", pct(ca["all"]["local_accuracy"]))
        row("reply accuracy", pct(cb["all"]["accuracy"]), pct(ca["all"]["accuracy"]))
        row("cloud calls per 1,000 requests", cb["cloud_calls_per_1000"], ca["cloud_calls_per_1000"])
        print(f"(cold improve took {r['cold_minutes']} min)")


if __name__ == "__main__":
    raise SystemExit(main())
