"""The role's agent.yaml template, rendered as Ansible's template module does, gives settings the agent accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from edge_agent.config import AgentSettings, load_settings

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "edge_agent"
SECURE = {
    "edge_agent_mqtt_tls": True,
    "edge_agent_mqtt_port": 8883,
    "edge_agent_mqtt_ca_cert": "files/fleet-ca.crt",
    "edge_agent_mqtt_username": "pi-kitchen",
    "vault_edge_agent_mqtt_password": "vault-secret",
}


def _bool(value: Any) -> bool:
    """Ansible's `bool` filter for the values an inventory holds."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("yes", "on", "1", "true")


def render(tmp_path: Path, **overrides: Any) -> tuple[str, AgentSettings]:
    """agent.yaml from the role's defaults plus `overrides`, and what the agent makes of it."""
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters |= {"to_json": json.dumps, "bool": _bool}
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    template = env.from_string((ROLE / "templates" / "agent.yaml.j2").read_text())
    text = template.render({**defaults, "inventory_hostname": "pi-kitchen", **overrides})
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return text, load_settings(path)


def test_defaults_are_plain_mqtt_without_credentials(tmp_path: Path) -> None:
    _, settings = render(tmp_path)
    mqtt = settings.mqtt
    assert (settings.device_id, mqtt.host, mqtt.port, mqtt.tls) == ("pi-kitchen", "127.0.0.1", 1883, False)
    assert mqtt.username is None and mqtt.password is None and mqtt.password_file is None


@pytest.mark.parametrize("client_cert", [False, True])
def test_tls_and_password_name_files_and_never_hold_the_password(tmp_path: Path, client_cert: bool) -> None:
    certs = {"edge_agent_mqtt_client_cert": "c.crt", "edge_agent_mqtt_client_key": "c.key"} if client_cert else {}
    text, settings = render(tmp_path, **SECURE, **certs)
    mqtt = settings.mqtt
    assert mqtt.tls and mqtt.port == 8883 and mqtt.ca_file == Path("/etc/edge-agent/mqtt-ca.crt")
    assert mqtt.username == "pi-kitchen" and mqtt.password_file == Path("/etc/edge-agent/mqtt-password")
    assert mqtt.password is None and "vault-secret" not in text
    expected = (Path("/etc/edge-agent/mqtt-client.crt"), Path("/etc/edge-agent/mqtt-client.key"))
    assert (mqtt.cert_file, mqtt.key_file) == (expected if client_cert else (None, None))


def test_inventory_strings_are_quoted_not_parsed(tmp_path: Path) -> None:
    """A host name or user that YAML would read as a number, a bool or a mapping stays a string."""
    _, settings = render(tmp_path, edge_agent_mqtt_host="broker: local", edge_agent_mqtt_username="1e3")
    assert (settings.mqtt.host, settings.mqtt.username) == ("broker: local", "1e3")
