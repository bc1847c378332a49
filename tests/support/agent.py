"""The agent as a user runs it: `edge-agent run` and the CLI as subprocesses, plus settings for in-process tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_agent.config.sections import MetricsSettings, MqttSettings
from edge_agent.config.settings import AgentSettings
from tests.support.broker import Broker, Client, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
LOOP_STALL_MS = 100  # issue 23: no callback may hold an agent's event loop longer than this
SPAWNED: list[Agent] = []  # every agent the tests started, for the loop-stall check after each test


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
    metrics_port: int

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return int(self.proc.returncode)

    def stalls(self) -> list[dict[str, Any]]:
        """Every `loop_stalled` line: a callback held the event loop longer than LOOP_STALL_MS."""
        return [line for line in self.logs() if line.get("event") in ("loop_stalled", "asyncio")]

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def wait_log(self, event: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first `count` log lines of `event`, once written; AssertionError with the log when they never come."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [line for line in self.logs() if line.get("event") == event]
            if len(found) >= count:
                return found[:count]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling a file the agent appends to, bounded by `timeout`
        raise AssertionError(f"no {count} x {event} (exit {self.proc.poll()}):\n{self.log.read_text()}")


def spawn_agent(
    port: int,
    models_file: Path,
    tmp: Path,
    device_id: str = "dev1",
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    config: Path | None = None,
) -> Agent:
    """Start the daemon with `python` (another install's, or this one) without waiting for it."""
    log = tmp / f"agent-{device_id}.log"
    cmd = [
        python,
        "-m",
        "edge_agent",
        "run",
        "--models",
        str(models_file),
        "--port",
        str(port),
    ]
    cmd += ["--device-id", device_id, "--log-level", "debug", *(["--config", str(config)] if config else [])]
    state = {
        "EDGE_AGENT_STATE_DIR": str(tmp / f"state-{device_id}"),  # a restart finds its spool again
        "EDGE_AGENT_METRICS__PORT": str(free_port()),  # agents side by side: each its own endpoint
        "EDGE_AGENT_LOOP_STALL_MS": str(LOOP_STALL_MS),  # every test fails on a stall (tests/conftest.py)
    }
    env = {**os.environ, **state, **(env or {})}
    proc = subprocess.Popen(cmd, stderr=log.open("wb"), env=env, cwd=ROOT)
    agent = Agent(proc, f"edge-agent/{device_id}", log, int(env["EDGE_AGENT_METRICS__PORT"]))
    SPAWNED.append(agent)
    return agent


def start_agent(
    broker: Broker, models_file: Path, tmp: Path, device_id: str = "dev1", status: str | None = None, **spawn: Any
) -> Agent:
    """Start the daemon (`spawn`: spawn_agent's other options) and wait for its retained `online` status
    (on `status`, default `edge-agent/{device_id}/status`)."""
    watcher = Client(broker.port, auth=broker.auth)
    status = status or f"edge-agent/{device_id}/status"
    watcher.subscribe(status)
    agent = spawn_agent(broker.port, models_file, tmp, device_id, **spawn)
    try:
        while True:
            msg = watcher.get(timeout=30, topic=status)
            if msg.json().get("status") == "online":
                break
    except TimeoutError:
        agent.proc.kill()
        raise AssertionError(f"agent never came online:\n{agent.log.read_text()}") from None
    finally:
        watcher.close()
    return agent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def agent_settings(port: int, **kw: object) -> AgentSettings:
    kw.setdefault("metrics", MetricsSettings(port=free_port()))
    return AgentSettings(device_id="t1", mqtt=MqttSettings(port=port), models_file=Path("unused"), **kw)  # type: ignore[arg-type]
