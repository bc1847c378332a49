"""Operator commands under pressure (issue 23): answered within their deadline and outside the request slots,
a rollback cancels a running pull, and a pull that kills the agent is refused when the broker redelivers it.
Real mosquitto, a real HTTP registry that trickles model files, the agent and its CLI as subprocesses."""

from __future__ import annotations

import http.server
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from edge_agent.lifecycle.crashpoints import CRASH_AT
from tests.support.agent import Agent
from tests.support.broker import Broker, client
from tests.support.registry import http_server, publish
from tests.system.test_rollout import Fleet, make_fleet, start


@contextmanager
def slow_registry(folder: Path) -> Iterator[str]:
    """`folder` over HTTP; documents at once, model files 100 bytes every 50 ms (a pull that lasts for ever)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(folder), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            if self.path.endswith((".json", ".sig")):
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"0" * 100)
                    self.wfile.flush()
                    time.sleep(0.05)  # the registry's pace, not a synchronisation
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        yield url


def pulled_by_cli(tmp_path: Path, tiny: Path, **settings: object) -> Fleet:
    """1.0.0 pulled from the registry folder by the CLI; 2.0.0 published (the agent will pull it)."""
    fleet = make_fleet(tmp_path, None, **settings)
    publish(fleet.registry, tiny, "1.0.0", fleet.keys)
    assert fleet.cli("models", "pull", "tiny", "--version", "1.0.0").returncode == 0
    publish(fleet.registry, tiny, "2.0.0", fleet.keys)
    return fleet


def over_http(fleet: Fleet, url: str, **settings: object) -> Path:
    """The agent's settings: the same registry and keys, through `url`, held to no minimum rate."""
    path = fleet.root / "agent-http.yaml"
    registry = {"url": url, "min_bytes_per_s": 1}
    path.write_text(yaml.safe_dump({"registry": registry, "trusted_keys": [str(fleet.keys.public)], **settings}))
    return path


def command(prefix: str, action: str, **body: object) -> tuple[str, str]:
    return f"{prefix}/cmd/models/{action}", json.dumps({"model": "tiny", **body})


def test_a_rollback_cancels_a_running_pull_and_is_answered_at_once(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: the rollback waited behind the pull, which a trickling registry kept going for hours."""
    fleet = pulled_by_cli(tmp_path, tiny_artifact)
    publish(fleet.registry, tiny_artifact, "3.0.0", fleet.keys)
    assert fleet.cli("models", "pull", "tiny", "--version", "2.0.0").returncode == 0  # 1.0.0 is the previous one
    with slow_registry(fleet.registry) as url:
        agent = agent_factory(fleet.models, config=over_http(fleet, url))
        with client(broker.port) as ops:
            ops.subscribe("ops/replies")
            ops.publish(*command(agent.prefix, "pull", version="3.0.0", id="p"), "ops/replies")
            agent.wait_log("pull_started")
            ops.publish(*command(agent.prefix, "rollback", id="r"), "ops/replies")
            replies = {r["id"]: r for r in (ops.get(topic="ops/replies").json() for _ in range(2))}
            back, pull = replies["r"], replies["p"]
    assert back["ok"] and "1.0.0 serves again" in back["message"], back
    assert pull["error"]["code"] == "refused" and "cancelled (a rollback came first)" in pull["error"]["message"]
    assert not list((fleet.state / "models" / "tiny").glob("3.0.0"))


def test_commands_answer_within_their_deadline_and_leave_every_request_slot_free(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: four slow commands at `max_inflight: 4` held every slot, and requests went unanswered for 30 s."""
    fleet = pulled_by_cli(tmp_path, tiny_artifact)
    with slow_registry(fleet.registry) as url:
        config = over_http(fleet, url, command_deadline_s=3, max_inflight=4)
        agent = agent_factory(fleet.models, config=config)
        with client(broker.port) as ops:
            ops.subscribe("ops/replies")
            for n in range(4):
                ops.publish(*command(agent.prefix, "pull", version="2.0.0", id=f"c{n}"), "ops/replies")
            agent.wait_log("pull_started")
            for n in range(8):
                ops.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": n}), "ops/replies")
            replies = [ops.get(topic="ops/replies").json() for _ in range(12)]
    answers = [r for r in replies if isinstance(r["id"], int)]
    late = [r for r in replies if str(r["id"]).startswith("c")]
    assert len(answers) == 8 and all("label" in a for a in answers), answers
    assert replies.index(answers[-1]) < replies.index(late[0]), [r["id"] for r in replies]  # requests first
    assert {r["error"]["code"] for r in late} == {"timeout"}, late
    assert "still running after 3 s: it goes on" in late[0]["error"]["message"]


def test_a_pull_that_kills_the_agent_is_refused_when_the_broker_redelivers_it(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """A poison command: before, the broker redelivered it at every restart, and it killed the agent every time.
    The kill is the OOM killer's (SIGKILL at the warm-up, through the crash point a test may set)."""
    fleet = pulled_by_cli(tmp_path, tiny_artifact)
    agent = agent_factory(fleet.models, config=fleet.config, env={CRASH_AT: "warm_up"})
    with client(broker.port) as ops:
        ops.subscribe("ops/replies")
        ops.publish(*command(agent.prefix, "pull", version="2.0.0", id="poison"), "ops/replies")
        assert agent.proc.wait(60) == -9
        again = start(fleet, agent_factory)  # the same device: the broker redelivers the command
        refused = ops.get(timeout=60, topic="ops/replies").json()
        assert refused["id"] == "poison" and refused["error"]["code"] == "refused", refused
        assert "stopped the agent once" in refused["error"]["message"]
        state, why = fleet.listing()["2.0.0"]
        assert state == "refused" and "the process pulling it stopped" in why
        ops.publish(*command(again.prefix, "pull", version="2.0.0", id="on-purpose"), "ops/replies")
        retried = ops.get(timeout=60, topic="ops/replies").json()
    assert retried["ok"] and "2.0.0 serves" in retried["message"], retried
