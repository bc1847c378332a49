"""The role's templates, rendered by Ansible itself from the role's defaults, give files the agent accepts.

One `ansible-playbook` run renders every case (a play each: the role's defaults, then the case's variables).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.settings import AgentSettings, load_settings
from edge_agent.contract import signing
from tests.deploy.ansible.runner import ROLE, ROOT, local_inventory, playbook

SECURE = {
    "edge_agent_mqtt_tls": True,
    "edge_agent_mqtt_port": 8883,
    "edge_agent_mqtt_ca_cert": "files/fleet-ca.crt",
    "edge_agent_mqtt_username": "pi-kitchen",
    "vault_edge_agent_mqtt_password": "vault-secret",
}
FLEET = {
    "edge_agent_trusted_keys": ["files/fleet-2025.pub", "/keys/fleet-2026.pub"],
    "edge_agent_registry_url": "https://models.example/registry",
    "edge_agent_registry_poll_minutes": 30,
    "edge_agent_probation": {"requests": 20, "minutes": 2.5, "max_error_rate": 0.1, "max_p99_ms": 80},
    "edge_agent_settings_extra": {"max_inflight": 8, "mqtt": {"keepalive_s": 15}},
    "edge_agent_models": [
        {"name": "iot-intents", "version": "20261201.1", "top_k": 2, "deadline_ms": 900},
        {"name": "seeded", "path": "/opt/seed/seeded", "threshold": 0.7},
    ],
    "edge_agent_bindings": [{"topic": "sensors/+/command", "model": "iot-intents", "output": "results/{topic}"}],
}
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "secure": SECURE,
    "mutual-tls": {**SECURE, "edge_agent_mqtt_client_cert": "c.crt", "edge_agent_mqtt_client_key": "c.key"},
    "quoted": {"edge_agent_mqtt_host": "broker: local", "edge_agent_mqtt_username": "1e3", "vault_x": "y"},
    "fleet": FLEET,  # + edge_agent_prefix: a folder of the test's
}
TEMPLATES = ["agent.yaml", "models.yaml", "edge-agent.service", "edge-agent-process.sh"]


def _play(case: str, out: Path) -> dict[str, Any]:
    return {
        "name": case,
        "hosts": "edge_devices",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(out / f"{case}.vars.json")],
        "tasks": [
            {
                "name": f"Render {name}",
                "ansible.builtin.template": {
                    "src": str(ROLE / "templates" / f"{name}.j2"),
                    "dest": str(out / case / name),
                    "mode": "0644",
                },
            }
            for name in TEMPLATES
        ],
    }


@dataclass(frozen=True)
class Rendered:
    out: Path  # {case}/{each of TEMPLATES}
    prefix: str  # the fleet case's edge_agent_prefix, where its trusted keys lie


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every template for every case, as the template module writes them."""
    tmp = tmp_path_factory.mktemp("render")
    out, prefix = tmp / "out", tmp / "device-a"
    out.mkdir()
    _, public = signing.keygen(tmp / "keys")
    keys = prefix / "etc" / "edge-agent" / "keys"  # where the role copies them (the agent reads them)
    keys.mkdir(parents=True)
    for key in FLEET["edge_agent_trusted_keys"]:
        shutil.copy(public, keys / Path(key).name)
    unit = {"edge_agent_unit_source": str(ROOT / "systemd" / "edge-agent.service")}
    for case, variables in CASES.items():
        (out / case).mkdir()
        device = {"edge_agent_device_id": "pi-kitchen", **unit, **variables}
        if case == "fleet":
            device["edge_agent_prefix"] = str(prefix)
        (out / f"{case}.vars.json").write_text(json.dumps(device))
    play = tmp / "render.yml"
    play.write_text(json.dumps([_play(case, out) for case in CASES]))
    inventory = local_inventory(tmp / "hosts.yml", {"pis": {"render-host": {}}})
    done = playbook(tmp, play, inventory)
    assert done.returncode == 0, done.stdout + done.stderr
    return Rendered(out, str(prefix))


def settings(rendered: Rendered, case: str) -> tuple[str, AgentSettings]:
    path = rendered.out / case / "agent.yaml"
    return path.read_text(), load_settings(path)


def test_defaults_are_plain_mqtt_without_credentials_under_the_usual_paths(rendered: Rendered) -> None:
    _, s = settings(rendered, "defaults")
    mqtt = s.mqtt
    assert (s.device_id, mqtt.host, mqtt.port, mqtt.tls) == ("pi-kitchen", "127.0.0.1", 1883, False)
    assert mqtt.username is None and mqtt.password is None and mqtt.password_file is None
    assert (s.state_dir, s.models_file) == (Path("/var/lib/edge-agent"), Path("/etc/edge-agent/models.yaml"))
    assert (s.trusted_keys, s.registry, s.log_level) == ([], None, "info")


@pytest.mark.parametrize("case", ["secure", "mutual-tls"])
def test_tls_and_password_name_files_and_never_hold_the_password(rendered: Rendered, case: str) -> None:
    text, s = settings(rendered, case)
    mqtt = s.mqtt
    assert mqtt.tls and mqtt.port == 8883 and mqtt.ca_file == Path("/etc/edge-agent/mqtt-ca.crt")
    assert mqtt.username == "pi-kitchen" and mqtt.password_file == Path("/etc/edge-agent/mqtt-password")
    assert mqtt.password is None and "vault-secret" not in text
    expected = (Path("/etc/edge-agent/mqtt-client.crt"), Path("/etc/edge-agent/mqtt-client.key"))
    assert (mqtt.cert_file, mqtt.key_file) == (expected if case == "mutual-tls" else (None, None))


def test_inventory_strings_are_quoted_not_parsed(rendered: Rendered) -> None:
    """A host name or user that YAML would read as a number, a bool or a mapping stays a string."""
    _, s = settings(rendered, "quoted")
    assert (s.mqtt.host, s.mqtt.username) == ("broker: local", "1e3")


def test_keys_registry_probation_and_extra_settings_follow_the_prefix(rendered: Rendered) -> None:
    prefix = rendered.prefix
    _, s = settings(rendered, "fleet")
    keys = f"{prefix}/etc/edge-agent/keys"
    assert s.trusted_keys == [Path(f"{keys}/fleet-2025.pub"), Path(f"{keys}/fleet-2026.pub")]
    assert s.registry is not None
    assert (s.registry.url, s.registry.poll_minutes) == ("https://models.example/registry", 30.0)
    probation = s.probation
    assert (probation.requests, probation.minutes, probation.max_error_rate, probation.max_p99_ms) == (20, 2.5, 0.1, 80)
    assert probation.min_agreement == 0.5  # a key the inventory leaves out keeps the agent's default
    assert (s.max_inflight, s.mqtt.keepalive_s, s.mqtt.host) == (8, 15, "127.0.0.1")
    assert s.state_dir == Path(f"{prefix}/var/lib/edge-agent")
    assert s.models_file == Path(f"{prefix}/etc/edge-agent/models.yaml")


def test_models_yaml_holds_the_entries_without_the_first_pull_version(rendered: Rendered) -> None:
    doc = yaml.safe_load((rendered.out / "fleet" / "models.yaml").read_text())
    assert doc == {
        "models": [
            {"name": "iot-intents", "top_k": 2, "deadline_ms": 900},
            {"name": "seeded", "path": "/opt/seed/seeded", "threshold": 0.7},
        ],
        "bindings": FLEET["edge_agent_bindings"],
    }
    assert yaml.safe_load((rendered.out / "defaults" / "models.yaml").read_text()) == {"models": [], "bindings": []}


def test_the_unit_is_the_repository_s_with_the_role_s_paths_and_user(rendered: Rendered) -> None:
    prefix = rendered.prefix
    source = (ROOT / "systemd" / "edge-agent.service").read_text().splitlines()
    unit = (rendered.out / "fleet" / "edge-agent.service").read_text().splitlines()
    assert unit[0].startswith("#") and len(unit) == len(source) + 1  # the managed-by header, then the repo's lines
    venv, config = f"{prefix}/opt/edge-agent/venv", f"{prefix}/etc/edge-agent"
    exec_start = next(line for line in unit if line.startswith("ExecStart="))
    assert exec_start.startswith(f"ExecStart={venv}/bin/edge-agent run --config {config}/agent.yaml")
    assert f"--models {config}/models.yaml" in exec_start
    assert f"ReadOnlyPaths={config}" in unit and f"WorkingDirectory={prefix}/var/lib/edge-agent" in unit
    assert "User=edge-agent" in unit and "Group=edge-agent" in unit
    moved = ("/opt/edge-agent/venv", "/etc/edge-agent", "/var/lib/edge-agent")
    for theirs, ours in zip(source, unit[1:], strict=True):
        assert theirs == ours or any(path in theirs for path in moved), (theirs, ours)
        leftover = ours
        for path in moved:
            leftover = leftover.replace(prefix + path, "")
        assert not any(path in leftover for path in moved), ours


def test_the_process_stand_in_is_valid_sh_with_the_role_s_paths(rendered: Rendered) -> None:
    """`sh -n` on the stand-in as the role writes it (the playbook test runs it for real)."""
    prefix = rendered.prefix
    script = rendered.out / "fleet" / "edge-agent-process.sh"
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert f"AGENT={prefix}/opt/edge-agent/venv/bin/edge-agent\n" in text
    assert f"PIDFILE={prefix}/var/lib/edge-agent/agent.pid\n" in text
    unit = (ROOT / "systemd" / "edge-agent.service").read_text().splitlines()
    environment = [line.removeprefix("Environment=") for line in unit if line.startswith("Environment=")]
    assert environment and all(f"  export {assignment}\n" in text for assignment in environment), text
