"""Shared fixtures: a real mosquitto, a real tiny ONNX artifact, the agent as a subprocess."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mqtt_helpers import Broker, Client, free_port, make_broker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = make_broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real int8 ONNX artifact from the trainer's own stages, on a tiny encoder (seconds)."""
    from trainer.tiny import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("artifacts") / "tiny")


def write_models(folder: Path, models: list[dict[str, Any]], bindings: list[dict[str, Any]] | None = None) -> Path:
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "bindings": bindings or []}))
    return path


@dataclass
class Agent:
    """`edge-agent run` as a user runs it, plus where it talks."""

    proc: subprocess.Popen[bytes]
    prefix: str
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return int(self.proc.returncode)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def start_agent(
    broker: Broker, models_file: Path, tmp: Path, device_id: str = "dev1", env: dict[str, str] | None = None
) -> Agent:
    """Start the daemon and wait for its retained `online` status (the readiness signal)."""
    log = tmp / f"agent-{device_id}.log"
    watcher = Client(broker.port)
    prefix = f"edge-agent/{device_id}"
    watcher.subscribe(f"{prefix}/status")
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "run",
        "--models",
        str(models_file),
        "--port",
        str(broker.port),
    ]
    cmd += ["--device-id", device_id, "--log-level", "debug"]
    state = {"EDGE_AGENT_STATE_DIR": str(tmp / f"state-{device_id}")}  # a restart finds its spool again
    proc = subprocess.Popen(cmd, stderr=log.open("wb"), env={**os.environ, **state, **(env or {})}, cwd=ROOT)
    try:
        while True:
            msg = watcher.get(timeout=30, topic=f"{prefix}/status")
            if msg.json().get("status") == "online":
                break
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"agent never came online:\n{log.read_text()}") from None
    finally:
        watcher.close()
    return Agent(proc, prefix, log)


@pytest.fixture()
def agent_factory(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def factory(models_file: Path, **kw: Any) -> Agent:
        agent = start_agent(broker, models_file, tmp_path, **kw)
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)


@pytest.fixture()
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto that keeps sessions across its own restart (as a production broker does)."""
    port = free_port()
    conf = tmp_path / "persistent.conf"
    (tmp_path / "mq").mkdir()
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {tmp_path / 'mq'}/\n"
        f"max_queued_messages 10000\nlog_type error\nuser {getpass.getuser()}\n"  # root would drop to `mosquitto`
    )
    broker = Broker(port, conf)
    broker.start()
    yield broker
    broker.stop()
