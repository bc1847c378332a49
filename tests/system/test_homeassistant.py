"""The real Home Assistant discovers the agent: its entities land in Home Assistant's registries, an event entity
fires when a binding answers, and availability follows the agent.

Home Assistant 2026.2 needs Python 3.13: it runs in a Debian trixie root that scripts/ha-root builds once (about
4 minutes) and caches outside the repository, under chroot, on the test's mosquitto (the root shares the host's
network). Its MQTT integration is set up by a config entry written to its storage, as the UI would; it reports
its entities' states back over MQTT (mqtt_statestream), so the test watches them on the broker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.contract.manifest import read
from tests.support.agent import ROOT, Agent, write_models
from tests.support.broker import Broker, Client, client, free_port
from tests.support.registry import publish
from tests.system.test_homeassistant_discovery import pulled_with_discovery

pytestmark = pytest.mark.slow
STATES = "ha-states"  # where Home Assistant publishes its entities' states (mqtt_statestream)
DISCOVERY = {"EDGE_AGENT_HOMEASSISTANT__DISCOVERY": "true"}


@pytest.fixture(scope="session")
def ha_root() -> Path:
    """The trixie root with Home Assistant in /opt/ha: built when missing (root only: debootstrap, chroot)."""
    if os.geteuid() != 0:
        why = "Home Assistant runs under chroot, which needs root"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run the real Home Assistant: {why}", pytrace=False)
        pytest.skip(why)
    built = subprocess.run([str(ROOT / "scripts" / "ha-root")], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
    return Path(built.stdout.split()[-1])


@dataclass
class HomeAssistant:
    proc: subprocess.Popen[bytes]
    config: Path  # on this side of the chroot
    log: Path

    def registry(self, name: str) -> list[dict[str, Any]]:
        """A registry as Home Assistant last saved it (it writes them a few seconds after a change)."""
        path = self.config / ".storage" / f"core.{name}_registry"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not yet, or mid-write
            return []
        return list(data["data"]["devices" if name == "device" else "entities"])

    def complaints(self) -> list[str]:
        """What Home Assistant's MQTT integration warned about (a config it refused, a template that failed)."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if "components.mqtt" in line]
        assert lines, "Home Assistant's MQTT log (info) should be in its output"
        return [line for line in lines if "WARNING" in line or "ERROR" in line]

    def until(self, what: str, found: Callable[[], Any], timeout: float = 90.0) -> Any:
        """`found()` once it is truthy (polled, bounded); the log when it never is."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = found()
            if value:
                return value
            assert self.proc.poll() is None, f"Home Assistant exited:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.2)  # polling files Home Assistant writes, bounded by `timeout`
        raise AssertionError(f"{what} never came:\n{self.log.read_text()[-4000:]}")


@pytest.fixture()
def home_assistant(ha_root: Path, broker: Broker) -> Iterator[HomeAssistant]:
    config = Path(tempfile.mkdtemp(prefix="edge-agent-test-", dir=ha_root / "tmp"))
    (config / "configuration.yaml").write_text(yaml.safe_dump(_configuration()))
    (config / ".storage").mkdir()
    (config / ".storage" / "core.config_entries").write_text(json.dumps(_mqtt_entry(broker.port)))
    log = config / "hass.out"
    inside = f"/{config.relative_to(ha_root)}"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    cmd = [shutil.which("chroot") or "/usr/sbin/chroot", str(ha_root), "/opt/ha/bin/hass", "-c", inside, "--skip-pip"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield HomeAssistant(proc, config, log)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(config, ignore_errors=True)


def _configuration() -> dict[str, Any]:
    return {
        "http": {"server_host": "127.0.0.1", "server_port": free_port()},
        "mqtt_statestream": {"base_topic": STATES, "publish_attributes": True},
        "logger": {"default": "warning", "logs": {"homeassistant.components.mqtt": "info"}},
    }


def _mqtt_entry(port: int) -> dict[str, Any]:
    """The MQTT integration's config entry as Home Assistant stores it (version 1.2: broker in data, discovery
    in options)."""
    now = "2026-01-01T00:00:00+00:00"
    entry = {
        "entry_id": "01EDGEAGENTTESTMQTT000000",
        "version": 1,
        "minor_version": 2,
        "domain": "mqtt",
        "title": "mosquitto",
        "data": {"broker": "127.0.0.1", "port": port},
        "options": {"discovery": True},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
        "discovery_keys": {},
        "subentries": [],
        "created_at": now,
        "modified_at": now,
    }
    return {"version": 1, "minor_version": 5, "key": "core.config_entries", "data": {"entries": [entry]}}


def states(watcher: Client, wanted: dict[str, Callable[[str], bool]], timeout: float = 60.0) -> dict[str, str]:
    """The first state Home Assistant publishes for each entity (domain.object_id) that its predicate accepts,
    whatever order they come in."""
    topics = {f"{STATES}/{entity.replace('.', '/', 1)}/state": entity for entity in wanted}
    found: dict[str, str] = {}
    end = time.monotonic() + timeout
    while found.keys() != wanted.keys():
        msg = watcher.get(timeout=max(0.1, end - time.monotonic()))
        entity = topics.get(msg.topic)
        if entity is not None and entity not in found and wanted[entity](msg.payload.decode()):
            found[entity] = msg.payload.decode()
    return found


def test_home_assistant_discovers_the_agent_fires_its_events_and_sees_it_leave(
    broker: Broker,
    home_assistant: HomeAssistant,
    tmp_path: Path,
    agent_factory: Callable[..., Agent],
    tiny_artifact: Path,
) -> None:
    version = read(tiny_artifact).version
    with client(broker.port) as watcher:
        watcher.subscribe("homeassistant/status")
        assert watcher.get(timeout=120).payload == b"online"  # Home Assistant's birth: its MQTT is up
        watcher.subscribe(f"{STATES}/#")
        bindings = [{"topic": "sensors/+/log", "model": "tiny", "output": "results/{topic}"}]
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], bindings)
        agent = agent_factory(models, env=DISCOVERY)

        ours = _our_entities(home_assistant, 5)  # the model's event and 3 sensors, the binding's event
        assert {e["platform"] for e in ours.values()} == {"mqtt"}
        assert "event.edge_agent_dev1_tiny_event" in ours and "sensor.edge_agent_dev1_tiny_version" in ours
        device = home_assistant.until("the agent's device", lambda: _device(home_assistant))
        assert (device["sw_version"], device["model"], device["name"]) == (
            f"tiny {version}",
            "edge-agent",
            "edge-agent dev1",
        )
        assert {e["device_id"] for e in ours.values()} == {device["id"]}
        assert states(watcher, {"sensor.edge_agent_dev1_tiny_version": lambda s: s == version})

        binding = next(e for e in ours if e.startswith("event.edge_agent_dev1_binding_"))
        with client(broker.port) as results:
            results.subscribe("results/#")
            results.publish("sensors/hall/log", "turn off the hall lights")
            result = results.get(topic="results/sensors/hall/log").json()
        fired = states(watcher, {binding: lambda s: s not in ("unknown", "unavailable")})[binding]
        assert fired.startswith("20")  # an ISO timestamp: an event entity's state is when it last fired
        attributes = _attributes(watcher, binding, {"event_type", "confidence", "source"})
        assert attributes["event_type"] == result["label"] and attributes["source"] == result["source"]
        assert attributes["confidence"] == round(result["confidence"], 4)

        assert agent.stop() == 0  # its retained status says offline: every entity becomes unavailable
        gone = ["event.edge_agent_dev1_tiny_event", binding, "sensor.edge_agent_dev1_tiny_requests"]
        assert states(watcher, {entity: lambda s: s == "unavailable" for entity in gone})
    assert not home_assistant.complaints()


def test_a_pulled_version_reaches_home_assistants_device_and_version_sensor(
    broker: Broker,
    home_assistant: HomeAssistant,
    tmp_path: Path,
    agent_factory: Callable[..., Agent],
    tiny_artifact: Path,
) -> None:
    config, models, registry, keys = pulled_with_discovery(tmp_path, tiny_artifact)
    with client(broker.port) as watcher:
        watcher.subscribe("homeassistant/status")
        assert watcher.get(timeout=120).payload == b"online"
        watcher.subscribe(f"{STATES}/#")
        agent = agent_factory(models, config=config)
        version = "sensor.edge_agent_dev1_tiny_version"
        assert states(watcher, {version: lambda s: s == "1.0.0"})
        assert home_assistant.until("the device at 1.0.0", lambda: _sw_version(home_assistant) == "tiny 1.0.0")
        publish(registry, tiny_artifact, "2.0.0", keys)
        watcher.subscribe("ops/replies")
        watcher.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny"}), "ops/replies")
        assert states(watcher, {version: lambda s: s == "2.0.0"}, timeout=120)
    assert home_assistant.until("the device at 2.0.0", lambda: _sw_version(home_assistant) == "tiny 2.0.0")
    assert not home_assistant.complaints()


def _sw_version(ha: HomeAssistant) -> str | None:
    device = _device(ha)
    return device["sw_version"] if device else None


def _attributes(watcher: Client, entity: str, names: set[str]) -> dict[str, Any]:
    """The entity's attributes as Home Assistant publishes them after its state (each JSON, on its own topic)."""
    prefix = f"{STATES}/{entity.replace('.', '/', 1)}/"
    found: dict[str, Any] = {}
    while not names <= found.keys():
        msg = watcher.get(timeout=30)
        if msg.topic.startswith(prefix):
            found[msg.topic[len(prefix) :]] = json.loads(msg.payload)
    return found


def _our_entities(ha: HomeAssistant, count: int) -> dict[str, dict[str, Any]]:
    def found() -> dict[str, dict[str, Any]] | None:
        ours = {e["entity_id"]: e for e in ha.registry("entity") if e["unique_id"].startswith("edge_agent_dev1_")}
        return ours if len(ours) >= count else None

    return dict(ha.until(f"{count} entities of the agent in the entity registry", found))


def _device(ha: HomeAssistant) -> dict[str, Any] | None:
    return next((d for d in ha.registry("device") if ["mqtt", "edge_agent_dev1"] in d["identifiers"]), None)
