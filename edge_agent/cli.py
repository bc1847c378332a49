"""`edge-agent run | check | classify | models list | feedback export`: one line and a non-zero exit on errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.cloud import cloud_problems
from edge_agent.config import AgentSettings, ModelsFile, load_models, load_settings
from edge_agent.errors import EX_CONFIG, AgentError, ArtifactError, BadRequest, ConfigError
from edge_agent.manifest import load as load_manifest
from edge_agent.messages import Answer, body

EX_DATAERR = 65


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="settings file (YAML or TOML); env EDGE_AGENT_* overrides it")
    parser.add_argument("--models", type=Path, dest="models_file", help="models.yaml (default: ./models.yaml)")
    parser.add_argument("--host", help="MQTT broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="MQTT broker port (default 1883)")
    parser.add_argument("--device-id", help="device id in topics (default: hostname)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Small models next to IoT sensors, on MQTT.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("run", help="serve the models of models.yaml over MQTT"))
    _common(sub.add_parser("check", help="validate settings, models.yaml and artifacts; exit 78 on problems"))
    classify = sub.add_parser("classify", help="run one text through a local model and print the reply")
    _common(classify)
    classify.add_argument("--model", required=True, help="model name from models.yaml")
    classify.add_argument("text", help="the text to classify")
    models = sub.add_parser("models", help="inspect served models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    _common(models_sub.add_parser("list", help="name, version, task, runtime, threshold and health"))
    feedback = sub.add_parser("feedback", help="escalations kept as training data")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    export = feedback_sub.add_parser("export", help="write the trainer's JSONL (cloud label as teacher)")
    _common(export)
    export.add_argument("--model", help="one model (default: all)")
    export.add_argument("--out", type=Path, help="output file (default: stdout)")
    return parser


def _settings(args: argparse.Namespace) -> AgentSettings:
    mqtt = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    overrides = {"models_file": args.models_file, "device_id": args.device_id, "log_level": args.log_level}
    settings = load_settings(args.config, **overrides)
    if mqtt:
        settings.mqtt = settings.mqtt.model_copy(update=mqtt)
    return settings


def _load(args: argparse.Namespace) -> tuple[AgentSettings, ModelsFile]:
    settings = _settings(args)
    return settings, load_models(settings.models_file)


def cmd_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    try:
        settings = _settings(args)
        models = load_models(settings.models_file)
        key = settings.signing_key()
    except ConfigError as exc:
        problems.extend(exc.problems)
        models, key = None, None
    for entry in models.models if models else []:
        try:
            load_manifest(entry.path, key)
        except ArtifactError as exc:
            problems.append(f"model {entry.name}: {exc}")
    if models is not None:
        problems.extend(cloud_problems(settings, models))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return EX_CONFIG
    assert models is not None
    print(f"ok: {len(models.models)} model(s), {len(models.bindings)} binding(s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.app import load_served, serve

    settings, models = _load(args)
    logs.configure(settings.log_level)
    problems = cloud_problems(settings, models)
    if problems:
        raise ConfigError(problems)
    pool, missing = load_served(settings, models)
    asyncio.run(serve(settings, models, pool, missing))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from edge_agent.runtimes.pool import ModelPool

    settings, models = _load(args)
    entry = models.entry(args.model)
    if entry is None:
        raise ConfigError([f"no model named {args.model!r} in {settings.models_file}"])
    pool = ModelPool.load(ModelsFile(models=[entry]), settings.threads, 1, settings.signing_key())
    served = pool.served[entry.name]
    start = time.monotonic()
    try:
        if not args.text.strip():
            raise BadRequest("text is empty")
        served.check_input(args.text)
        prediction = served.runtime.predict([args.text], entry.top_k)[0]
    except AgentError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EX_DATAERR
    latency = (time.monotonic() - start) * 1000
    answer = Answer(prediction, "local")
    if prediction.confidence < served.threshold:  # as the agent would mark it without a cloud
        answer = Answer(prediction, "local-fallback", "local_only", "low_confidence")
    print(json.dumps(body(None, entry.name, answer, served.manifest.version, latency), ensure_ascii=False))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    settings, models = _load(args)
    key = settings.signing_key()
    print(f"{'name':<20} {'version':<18} {'task':<18} {'runtime':<8} {'threshold':<9} health")
    for entry in models.models:
        try:
            m = load_manifest(entry.path, key)
            threshold = entry.threshold if entry.threshold is not None else m.thresholds.escalate
            print(f"{entry.name:<20} {m.version:<18} {m.task:<18} {m.runtime:<8} {threshold:<9.3f} ok")
        except ArtifactError as exc:
            print(f"{entry.name:<20} {'-':<18} {'-':<18} {'-':<8} {'-':<9} {exc}")
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from edge_agent.feedback import FeedbackLog

    settings = _settings(args)
    log = FeedbackLog(settings.state_dir / "feedback", settings.feedback_max_rows)
    out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    count = 0
    try:
        for line in log.rows(args.model):
            out.write(line)
            count += 1
    finally:
        if args.out:
            out.close()
    print(f"{count} row(s)", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "classify": cmd_classify,
    "models": cmd_models_list,
    "feedback": cmd_feedback_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
