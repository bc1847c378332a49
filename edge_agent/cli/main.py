"""`edge-agent run | check | classify | status | models ... | feedback export`; errors: one line, non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.cli import models as cli_models
from edge_agent.config.models_file import ModelEntry, ModelsFile, group_problems, load_models
from edge_agent.config.settings import AgentSettings, load_settings
from edge_agent.contract.manifest import load as load_manifest
from edge_agent.contract.messages import Answer, ModelReply
from edge_agent.errors import EX_CONFIG, EX_DATAERR, AgentError, ArtifactError, BadRequest, ConfigError
from edge_agent.lifecycle.recovery import recover
from edge_agent.lifecycle.rollout import PIDFILE
from edge_agent.lifecycle.store import Store
from edge_agent.ops.pidfile import PidFile
from edge_agent.routing import policy
from edge_agent.routing.cloud import cloud_problems

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


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
    check = sub.add_parser("check", help="validate settings, models.yaml and artifacts; exit 78 on problems")
    _common(check)
    check.add_argument("--settings-only", action="store_true", help="the settings file alone (no models.yaml)")
    classify = sub.add_parser("classify", help="run one text through a local model and print the reply")
    _common(classify)
    classify.add_argument("--model", required=True, help="model name from models.yaml")
    classify.add_argument("text", help="the text to classify")
    models = sub.add_parser("models", help="the models on this device: list, pull, roll back")
    cli_models.register(models.add_subparsers(dest="models_command", required=True), _common)
    status = sub.add_parser("status", help="what the running agent serves (its status file)")
    _common(status)
    status.add_argument("--wait-healthy", nargs=2, metavar=("MODEL", "VERSION"), help="wait until it serves, proven")
    status.add_argument("--timeout", type=float, default=300.0, help="seconds --wait-healthy waits (default 300)")
    status.add_argument("--json", action="store_true", help="one JSON object: the status file and the metrics summary")
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
    """Settings and models.yaml, each model pointing at the version the store serves (when pulled)."""
    settings = _settings(args)
    return settings, Store(settings.state_dir).overlay(load_models(settings.models_file))


def cmd_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    try:
        settings = _settings(args)
        if args.settings_only:
            print(f"ok: settings for device {settings.device_id}")
            return 0
        models = Store(settings.state_dir).overlay(load_models(settings.models_file))
        trusted = settings.trusted()
    except (ConfigError, ArtifactError) as exc:
        problems.extend(exc.problems if isinstance(exc, ConfigError) else [str(exc)])
        models, trusted = None, []
    for entry in models.models if models else []:
        problems.extend(_artifact_problems(entry, trusted, settings.cloud is not None))
    if models is not None:
        problems.extend(cloud_problems(settings, models) + group_problems(settings, models))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return EX_CONFIG
    assert models is not None
    print(f"ok: {len(models.models)} model(s), {len(models.bindings)} binding(s)")
    return 0


def _artifact_problems(entry: ModelEntry, trusted: Sequence[Ed25519PublicKey], cloud: bool) -> list[str]:
    """The model's artifact and its candidate's, verified; a cold start (cloud_labels, no artifact yet)
    needs a cloud instead."""
    folders = [("", entry.path)] if entry.path is not None or not (entry.cloud_labels and cloud) else []
    if entry.candidate is not None:
        folders.append(("candidate ", entry.candidate.path))
    problems = []
    for what, folder in folders:
        try:
            load_manifest(entry.artifact if folder is None else folder, trusted)
        except ArtifactError as exc:
            problems.append(f"model {entry.name}: {what}{exc}")
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.app import load_served, serve
    from edge_agent.ops import logs

    settings = _settings(args)
    logs.configure(settings.log_level)
    _writable(settings.state_dir)
    pidfile = PidFile(settings.state_dir / PIDFILE)
    unclean = pidfile.stale()  # the last run ended without its cleanup: a crash, a kill, a power cut
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a CLI pull's SIGHUP before we serve: picked up once we do
    pidfile.hold()  # from the start, so a crash while loading leaves it stale too
    try:
        # the store checked against the disk: each model serves the newest version that verifies
        store = Store(settings.state_dir)
        models, verified = recover(store, load_models(settings.models_file), settings.trusted(), unclean)
        problems = cloud_problems(settings, models) + group_problems(settings, models)
        if problems:
            raise ConfigError(problems)
        pool, missing = load_served(settings, models, verified)
        asyncio.run(serve(settings, models, pool, missing))
    finally:
        pidfile.release()
    return 0


def _writable(folder: Path) -> None:
    """The state folder takes writes (the spool, the store, the pid file), or one line and exit 78: a read-only
    mount or a wrong path is for a person to fix; restarting would not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError([f"state_dir {folder}: {exc.strerror}: the agent must be able to write there"]) from None


def cmd_classify(args: argparse.Namespace) -> int:
    from edge_agent.runtimes.pool import ModelPool

    settings, models = _load(args)
    entry = models.entry(args.model)
    if entry is None:
        raise ConfigError([f"no model named {args.model!r} in {settings.models_file}"])
    pool = ModelPool.load(ModelsFile(models=[entry]), settings.threads, 1, settings.trusted())
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
    rule = policy.policy_for(entry, served.threshold, None, False, served.manifest.max_distance)
    reason = policy.escalation(rule, prediction)
    answer = Answer(prediction, "local")
    if reason is not None:  # as the agent without a cloud marks it: the same rule, the same words
        answer = Answer(prediction, "local-fallback", str(policy.stays_local(rule)), str(reason))
    print(
        json.dumps(ModelReply(None, entry.name, answer, served.manifest.version, latency).as_dict(), ensure_ascii=False)
    )
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from edge_agent.routing.feedback import FeedbackLog

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
    "models": lambda args: cli_models.COMMANDS[args.models_command](args, *_load(args)),
    "status": lambda args: cli_models.status(args, _settings(args)),
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
    except ArtifactError as exc:  # an artifact or a pull refused: the device keeps what it serves
        print(f"edge-agent: refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
