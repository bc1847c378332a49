"""systemd readiness: READY=1 once the agent serves, even while the broker is unreachable at boot,
so a late network cannot get the unit killed by its start timeout."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.agent import spawn_agent, write_models
from tests.support.broker import free_port


def test_ready_is_sent_while_the_broker_is_still_unreachable(tmp_path: Path, tiny_artifact: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    agent = spawn_agent(free_port(), models, tmp_path, env={"NOTIFY_SOCKET": str(path)})  # nothing listens there
    try:
        first = sock.recv(64)
        assert first == b"READY=1", first
        assert agent.proc.poll() is None
        assert not [line for line in agent.logs() if line.get("event") == "ready"]  # not connected: no broker
        assert agent.wait_log("mqtt_connect_failed")
        assert (tmp_path / "state-dev1" / "agent.pid").read_text().strip() == str(agent.proc.pid)
    finally:
        assert agent.stop() == 0
        sock.close()
    assert not (tmp_path / "state-dev1" / "agent.pid").exists()
