"""TLS and password auth end to end: certificates made with openssl, a mosquitto TLS listener with a
password file, the agent as a subprocess. It serves only a broker it can verify, with credentials it accepts."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import ROOT, Agent, spawn_agent, start_agent, write_models
from tests.support.broker import Auth, Broker, BrokerConfig, TlsFiles, client, write_passwords
from tests.support.pki import Issued, issue_server, make_ca

USERS = {"agent": "agent-secret", "tester": "tester-secret"}
LOOPBACK = ["IP:127.0.0.1", "DNS:localhost"]


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued  # signed by `ca`, for 127.0.0.1 and localhost
    other_host: Issued  # signed by `ca`, for "otherhost" only
    rogue_ca: Issued
    rogue: Issued  # for 127.0.0.1, signed by `rogue_ca`
    passwords: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = make_ca(folder, "fleet-ca"), make_ca(folder, "rogue-ca")
    return Pki(
        ca,
        issue_server(folder, ca, "broker", LOOPBACK),
        issue_server(folder, ca, "otherhost", ["DNS:otherhost"]),
        rogue_ca,
        issue_server(folder, rogue_ca, "rogue", LOOPBACK),
        write_passwords(folder / "passwd", USERS),
    )


@contextlib.contextmanager
def tls_broker(pki: Pki, tmp_path: Path, server: Issued, client_auth: Auth | None = None) -> Iterator[Broker]:
    """Only TLS, only known users; test clients come in as `tester` (trusting the fleet CA unless told)."""
    config = BrokerConfig(
        tls=TlsFiles(pki.ca.cert, server.cert, server.key),
        allow_anonymous=False,
        password_file=pki.passwords,
        user=getpass.getuser(),  # root would drop to `mosquitto`, which cannot read tmp_path
    )
    broker = config.broker(tmp_path / "tls.conf", client_auth or Auth(pki.ca.cert, "tester", USERS["tester"]))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def agent_env(
    pki: Pki, tmp_path: Path, username: str | None = "agent", password: str = USERS["agent"]
) -> dict[str, str]:
    """Settings as systemd's EnvironmentFile would give them; the password comes from a file."""
    env = {"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__CA_FILE": str(pki.ca.cert)}
    env["EDGE_AGENT_MQTT__RECONNECT_MAX_S"] = "1"  # retries come quickly
    if username is not None:
        secret = tmp_path / "mqtt-password"
        secret.write_text(password + "\n")
        env |= {"EDGE_AGENT_MQTT__USERNAME": username, "EDGE_AGENT_MQTT__PASSWORD_FILE": str(secret)}
    return env


def never_online(agent: Agent, broker: Broker, event: str, count: int = 2) -> list[str]:
    """`count` failed attempts logged (so it retries), the process alive, no session, no status; the reasons."""
    failures = agent.wait_log(event, count)
    assert agent.proc.poll() is None, "a refused connection must not end the agent"
    assert not [line for line in agent.logs() if line.get("event") == "mqtt_connected"]
    with client(broker.port, auth=broker.auth) as c:
        c.subscribe(f"{agent.prefix}/status")  # a retained status would come before the probe
        c.subscribe("probe")
        c.publish("probe", "1")
        assert c.get().topic == "probe"
    return [str(line["reason"]) for line in failures]


def test_agent_serves_over_tls_with_a_password(
    pki: Pki, tmp_path: Path, tiny_artifact: Path, agents: list[Agent]
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    with tls_broker(pki, tmp_path, pki.server) as broker:
        agent = start_agent(broker, models, tmp_path, env=agent_env(pki, tmp_path))
        agents.append(agent)
        with client(broker.port, auth=broker.auth) as c:
            c.subscribe("me/replies")
            c.publish(f"{agent.prefix}/req/tiny", '{"text": "turn off the lights", "id": "tls"}', "me/replies", b"7")
            reply = c.get(topic="me/replies")
        assert (
            reply.correlation == b"7"
            and reply.json()["id"] == "tls"
            and reply.json()["source"] in ("local", "local-fallback")
        )
        assert agent.stop() == 0


@pytest.mark.parametrize(("username", "password"), [(None, ""), ("agent", "not-the-password"), ("nobody", "x")])
def test_refused_credentials_never_come_online_and_keep_retrying(
    pki: Pki, tmp_path: Path, tiny_artifact: Path, agents: list[Agent], username: str | None, password: str
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    with tls_broker(pki, tmp_path, pki.server) as broker:
        agent = spawn_agent(broker.port, models, tmp_path, env=agent_env(pki, tmp_path, username, password))
        agents.append(agent)
        reasons = never_online(agent, broker, "mqtt_connect_refused")
        assert len(reasons) == 2 and set(reasons) <= {"Not authorized", "Bad user name or password"}, reasons
        assert agent.stop() == 0


@pytest.mark.parametrize("server", ["rogue", "other_host"])
def test_a_broker_certificate_it_cannot_verify_is_refused(
    pki: Pki, tmp_path: Path, tiny_artifact: Path, agents: list[Agent], server: str
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    rogue = server == "rogue"
    why = "unable to get local issuer certificate" if rogue else "IP address mismatch"
    # the probe client trusts what the agent refuses, to look at the broker from inside
    probe = Auth(pki.rogue_ca.cert if rogue else pki.ca.cert, "tester", USERS["tester"], check_hostname=False)
    with tls_broker(pki, tmp_path, getattr(pki, server), probe) as broker:
        agent = spawn_agent(broker.port, models, tmp_path, env=agent_env(pki, tmp_path))
        agents.append(agent)
        reasons = never_online(agent, broker, "mqtt_connect_failed")
        assert all("certificate verify failed" in r and why in r for r in reasons), reasons
        assert agent.stop() == 0


def readme_acl() -> str:
    """The ACL example of README.md, as an operator would copy it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("# /etc/mosquitto/edge-agent.acl\n")
    return text[start : text.index("```", start)]


def test_the_readme_acl_lets_each_user_do_its_part_only(
    tmp_path: Path, tiny_artifact: Path, agents: list[Agent]
) -> None:
    users = {"pi-kitchen": "agent-pw", "dashboard": "client-pw", "operator": "operator-pw"}
    (tmp_path / "edge-agent.acl").write_text(readme_acl())
    config = BrokerConfig(
        allow_anonymous=False,
        password_file=write_passwords(tmp_path / "passwd", users),
        acl_file=tmp_path / "edge-agent.acl",
        user=getpass.getuser(),
    )
    broker = config.broker(tmp_path / "acl.conf", Auth(username="operator", password=users["operator"]))
    broker.start()
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    try:
        env = {"EDGE_AGENT_MQTT__USERNAME": "pi-kitchen", "EDGE_AGENT_MQTT__PASSWORD": users["pi-kitchen"]}
        agents.append(start_agent(broker, models, tmp_path, device_id="pi-kitchen", env=env))
        dashboard = Auth(username="dashboard", password=users["dashboard"])
        with client(broker.port, auth=broker.auth) as operator, client(broker.port, auth=dashboard) as dash:
            operator.subscribe("edge-agent/#")
            dash.subscribe("clients/dashboard/replies/#")
            dash.publish("edge-agent/pi-kitchen/cmd/reboot", "{}")  # operators only
            dash.publish("edge-agent/pi-kitchen/status", '{"status": "offline"}')  # the agent only
            dash.publish(
                "edge-agent/pi-kitchen/req/tiny", '{"text": "lights on", "id": 1}', "clients/dashboard/replies/1"
            )
            assert dash.get(topic="clients/dashboard/replies/1").json()["id"] == 1
            # in order from one publisher: the two denied messages would have come before the request
            status, request = operator.get(), operator.get()
            assert status.retain and status.json()["status"] == "online"
            assert request.topic == "edge-agent/pi-kitchen/req/tiny"
            operator.publish("edge-agent/pi-kitchen/cmd/reboot", "{}")
            assert operator.get().topic == "edge-agent/pi-kitchen/cmd/reboot"
    finally:
        broker.stop()
