"""Shared fixtures: a real mosquitto, a real tiny ONNX artifact, the agent as a subprocess."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import SPAWNED, Agent, start_agent
from tests.support.broker import Broker, BrokerConfig, make_broker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_loop_stalls() -> Iterator[None]:
    """Issue 23: after each test, no agent it started held its event loop longer than LOOP_STALL_MS (asyncio's
    debug mode times every callback; the agent logs a slow one as `loop_stalled`)."""
    first = len(SPAWNED)
    yield
    stalls = [(agent.log.name, line) for agent in SPAWNED[first:] for line in agent.stalls()]
    assert not stalls, f"the event loop stalled: {stalls[:5]}"


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = make_broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real int8 ONNX artifact from the trainer's own stages, on a tiny encoder (seconds)."""
    from trainer.encoder.tiny import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("artifacts") / "tiny")


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
    (tmp_path / "mq").mkdir()
    # root would drop to `mosquitto`, which cannot read tmp_path
    broker = BrokerConfig(persistence_dir=tmp_path / "mq", user=getpass.getuser()).broker(tmp_path / "persistent.conf")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def agents() -> Iterator[list[Agent]]:
    """Agents a test starts itself (restarts, several brokers); killed after the test."""
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)
