"""Nothing accepted is lost: 5,000 QoS 1 requests, the agent killed (SIGKILL) or the broker restarted
mid-stream; every request id is answered (duplicates allowed: at-least-once)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.agent import Agent, start_agent, write_models
from tests.support.broker import Broker, SessionClient

N = 5000


def publish_all(me: SessionClient, prefix: str) -> None:
    for i in range(N):
        payload = json.dumps({"text": f"lights {i % 7}", "id": i, "reply_to": "me/replies"})
        me.client.publish(f"{prefix}/req/tiny", payload, qos=1)


def collect(me: SessionClient, until: Callable[[set[int]], bool], timeout: float = 240.0) -> set[int]:
    """Reply ids seen until `until(ids)` holds; TimeoutError past `timeout`."""
    ids: set[int] = set()
    end = time.monotonic() + timeout
    while not until(ids):
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(ids)} of {N} answered")
        msg = me.messages.get(timeout=left)
        ids.add(int(json.loads(msg.payload)["id"]))
    return ids


def through_a_fault(
    broker: Broker, artifact: Path, tmp: Path, agents: list[Agent], name: str, fault: Callable[[Agent, Path], None]
) -> set[int]:
    """Publish N requests, let a fifth be answered, run `fault(agent, models_file)`, then collect replies
    until every id came."""
    models = write_models(tmp, [{"name": "tiny", "path": str(artifact)}])
    agent = start_agent(broker, models, tmp, name)
    agents.append(agent)
    me = SessionClient(broker.port, f"tester-{name}")
    try:
        publish_all(me, agent.prefix)
        seen = collect(me, lambda ids: len(ids) >= N // 5)
        fault(agent, models)
        return seen | collect(me, lambda ids: len(ids | seen) == N)
    finally:
        me.close()


def test_agent_killed_mid_stream_loses_no_request(
    persistent_broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    def kill_and_restart(agent: Agent, models: Path) -> None:
        agent.proc.send_signal(signal.SIGKILL)  # mid-stream: thousands accepted by the broker, not answered
        agent.proc.wait(10)
        agents.append(start_agent(persistent_broker, models, tmp_path, "k9"))

    assert through_a_fault(persistent_broker, tiny_artifact, tmp_path, agents, "k9", kill_and_restart) == set(range(N))


def test_broker_restarted_mid_stream_loses_no_request(
    persistent_broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    def restart_broker(_agent: Agent, _models: Path) -> None:
        persistent_broker.stop()  # sessions and queued requests are kept on disk (persistence true)
        persistent_broker.start()

    seen = through_a_fault(persistent_broker, tiny_artifact, tmp_path, agents, "br", restart_broker)
    assert seen == set(range(N)) and agents[0].proc.poll() is None
