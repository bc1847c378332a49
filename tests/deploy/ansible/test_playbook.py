"""site.yml and rollout.yml for real against two local devices: canary batches, a refused canary, a rollback.

Two inventory hosts, both `connection: local`, each with its own prefix (every path of the role under it) and
device id, so `serial` makes real batches. Beside them: a real mosquitto (the `broker` fixture), a registry signed
with a key from `edge-trainer keygen` and served by a static HTTP server on loopback, and the role's stand-in for
systemd (`edge_agent_service_manager: process`: `edge-agent run` detached, found again by its pidfile).

Install, kept fast: the role pip-installs a wheel of this checkout with `--no-deps` into the venv it makes with
`edge_agent_python -m venv`. That interpreter is a wrapper around this one which, once the venv exists, adds a
.pth line naming this venv's site-packages, so the device venv finds onnxruntime & co. with nothing downloaded
(CI has them in the .venv scripts/bootstrap builds). `--system-site-packages` would not do: a venv made by a
venv's interpreter inherits the base interpreter's site-packages, not the dev venv's.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import manifest as mf
from tests.deploy.ansible.runner import ANSIBLE, BIN, ROOT, local_inventory, playbook, recap, results
from tests.support.broker import Broker, client, free_port
from tests.support.registry import Keys, publish, serve, wrong_samples

V1, V2, V3, V4 = "1.0", "2.0", "3.0", "4.0"
PROBATION_MINUTES = 0.05  # 3 s without traffic, then a version passes (the agent judges every <= 5 s)
PULL = "Pull the version, verify it, warm it up and swap it in while serving (as the service user)"
GATE = "Health gate (serving the version, through its probation)"
ROLLBACK = "Back to the version served before (the agent may have rolled back by itself already)"
PLAY = "PLAY [Roll a model version out in canary batches]"


@dataclass(frozen=True)
class Device:
    """One inventory host: a device whose every path lies under `prefix`."""

    name: str
    prefix: Path

    @property
    def state_dir(self) -> Path:
        return self.prefix / "var" / "lib" / "edge-agent"

    @property
    def config_dir(self) -> Path:
        return self.prefix / "etc" / "edge-agent"

    @property
    def bin(self) -> Path:
        return self.prefix / "opt" / "edge-agent" / "venv" / "bin"

    def edge_agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        files = ["--config", str(self.config_dir / "agent.yaml"), "--models", str(self.config_dir / "models.yaml")]
        cmd = [str(self.bin / "edge-agent"), *args, *files]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def store(self, model: str) -> dict[str, Any]:
        """The device's record of every version of `model` (what `models list` prints)."""
        return dict(json.loads((self.state_dir / "models" / model / "state.json").read_text()))

    def pid(self) -> int:
        return int((self.state_dir / "agent.pid").read_text())

    def stop(self) -> None:
        """Teardown: the stand-in's stop, else SIGTERM to the pidfile's pid (a test that failed half-way)."""
        control, pidfile = self.bin / "edge-agent-process", self.state_dir / "agent.pid"
        if control.exists():
            subprocess.run([str(control), "stop"], capture_output=True, timeout=60, check=False)
        elif pidfile.exists():
            os.kill(self.pid(), signal.SIGTERM)


@dataclass(frozen=True)
class Fleet:
    tmp: Path
    inventory: Path
    devices: tuple[Device, Device]
    model: str

    def site(self) -> subprocess.CompletedProcess[str]:
        """site.yml on both devices at once (its default batches of 20% would take them one by one)."""
        return playbook(self.tmp, ANSIBLE / "site.yml", self.inventory, {"edge_agent_site_batch": "100%"})

    def rollout(self, version: str, timeout: float) -> subprocess.CompletedProcess[str]:
        extra = {"edge_agent_rollout_model": self.model, "edge_agent_rollout_version": version}
        extra["edge_agent_rollout_timeout"] = timeout
        return playbook(self.tmp, ANSIBLE / "rollout.yml", self.inventory, extra)


def python_for_venvs(folder: Path) -> Path:
    """This interpreter, plus: after `-m venv DIR`, DIR sees this venv's packages (see the module's docstring)."""
    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    script = folder / "python3"
    script.write_text(
        "#!/bin/sh\n"
        f'{shlex.quote(sys.executable)} "$@" || exit $?\n'
        'if [ "$1 $2" = "-m venv" ]; then\n'
        "  for venv; do :; done\n"
        f'  echo {shlex.quote(site)} > "$venv/lib/{version}/site-packages/dev-venv.pth"\n'
        "fi\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built from a copy of its sources (nothing is written into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("edge_agent", "trainer"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (found,) = tmp.glob("edge_agent-*.whl")
    return found


@pytest.fixture()
def registry(tmp_path: Path, tiny_artifact: Path) -> Iterator[tuple[str, Path]]:
    """(URL, public key) of a registry holding V1..V4 of the tiny model; V3's warm-up answers are wrong."""
    keygen = [str(BIN / "edge-trainer"), "keygen", "--out", str(tmp_path / "keys")]
    done = subprocess.run(keygen, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    keys = Keys(tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub")
    folder = tmp_path / "registry"
    for version in (V1, V2, V4):
        publish(folder, tiny_artifact, version, keys)
    publish(folder, tiny_artifact, V3, keys, wrong_samples)
    with serve(folder) as url:
        yield url, keys.public


@pytest.fixture()
def fleet(
    tmp_path: Path, broker: Broker, registry: tuple[str, Path], wheel: Path, tiny_artifact: Path
) -> Iterator[Fleet]:
    url, public_key = registry
    model = mf.read(tiny_artifact).name
    devices = (Device("pi-a", tmp_path / "pi-a"), Device("pi-b", tmp_path / "pi-b"))
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    fleet_vars = {
        "edge_agent_service_manager": "process",
        "edge_agent_create_user": False,
        "edge_agent_user": user,
        "edge_agent_group": group,
        "edge_agent_admin_user": user,
        "edge_agent_admin_group": group,
        "edge_agent_package": str(wheel),
        "edge_agent_version": "",
        "edge_agent_pip_extra_args": "--no-deps",
        "edge_agent_python": str(python_for_venvs(tmp_path)),
        "edge_agent_mqtt_port": broker.port,
        "edge_agent_trusted_keys": [str(public_key)],
        "edge_agent_registry_url": url,
        "edge_agent_probation": {"minutes": PROBATION_MINUTES},
        "edge_agent_models": [{"name": model, "version": V1}],
    }
    hosts = {  # two agents on one host: a metrics port each
        device.name: {"edge_agent_prefix": str(device.prefix), "edge_agent_metrics_port": free_port()}
        for device in devices
    }
    inventory = local_inventory(tmp_path / "hosts.yml", {"pis": hosts}, fleet_vars)
    yield Fleet(tmp_path, inventory, devices, model)
    for device in devices:
        device.stop()


def wait_online(broker: Broker, device: Device) -> dict[str, Any]:
    """The device's retained status once it says `online` (it has subscribed: requests reach it)."""
    topic = f"edge-agent/{device.name}/status"
    with client(broker.port) as watcher:
        watcher.subscribe(topic)
        while True:
            status: dict[str, Any] = watcher.get(timeout=60, topic=topic).json()
            if status.get("status") == "online":
                return status


def served_version(broker: Broker, device: Device, model: str) -> str:
    """The version named in the device's reply to a real request over MQTT."""
    reply = f"test/replies/{device.name}"
    with client(broker.port) as asker:
        asker.subscribe(reply)
        request = json.dumps({"text": "turn on the lights in the kitchen"})
        asker.publish(f"edge-agent/{device.name}/req/{model}", request, response_topic=reply)
        answer: dict[str, Any] = asker.get(timeout=60, topic=reply).json()
    assert "error" not in answer, answer
    return str(answer["version"])


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def gated(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    """The pull and health-gate results, in the order the play ran them."""
    return [(task, status, host) for task, status, host in results(done) if task in (PULL, GATE)]


def test_install_then_canary_rollouts_a_refused_canary_and_a_rollback(fleet: Fleet, broker: Broker) -> None:
    a, b = fleet.devices
    model = fleet.model

    # Install: settings (checked alone), the first pull (V1, named in edge_agent_models), models.yaml (checked
    # with every artifact), the unit, the stand-in service.
    done = fleet.site()
    assert done.returncode == 0, output(done)
    for device in (a, b):
        wait_online(broker, device)
        assert served_version(broker, device, model) == V1
        assert device.store(model)["serving"] == V1
        assert (device.prefix / "etc" / "systemd" / "system" / "edge-agent.service").is_file()
        assert not (device.config_dir / "models.yaml.candidate").exists()

    # V2 in canary batches: a pulls it and is proven healthy before b starts.
    done = fleet.rollout(V2, timeout=60)
    assert done.returncode == 0, output(done)
    assert done.stdout.count(PLAY) == 2, output(done)  # a batch of one, then the rest
    order = [(PULL, "changed", "pi-a"), (GATE, "ok", "pi-a"), (PULL, "changed", "pi-b"), (GATE, "ok", "pi-b")]
    assert gated(done) == order, output(done)
    for device in (a, b):
        assert served_version(broker, device, model) == V2
        store = device.store(model)
        assert (store["serving"], store["previous"]) == (V2, V1)
        assert store["versions"][V2]["probation"] == "passed"

    # site.yml again changes nothing: the agents keep running, and V1 (the first pull) is not pulled back.
    pids = {device.name: device.pid() for device in (a, b)}
    done = fleet.site()
    assert done.returncode == 0, output(done)
    assert {host: counts["changed"] for host, counts in recap(done).items()} == {"pi-a": 0, "pi-b": 0}, output(done)
    assert {device.name: device.pid() for device in (a, b)} == pids

    # V3 answers its warm-up wrong: the canary refuses it, serves V2 on, and the play stops before b.
    done = fleet.rollout(V3, timeout=60)
    assert done.returncode != 0, output(done)
    assert recap(done)["pi-a"]["failed"] == 1, output(done)
    assert (ROLLBACK, "skipping", "pi-a") in results(done)  # it never left V2: nothing to roll back
    assert all(host == "pi-a" for _, _, host in results(done)), output(done)
    assert "warm-up" in done.stdout and f"{model} {V3} failed on pi-a" in done.stdout, output(done)
    refused = a.store(model)
    assert refused["serving"] == V2 and refused["versions"][V3]["state"] == "refused"
    assert served_version(broker, a, model) == V2

    # V4 is not proven within the gate's 1 s (its probation lasts 3 s): the play rolls a back to V2 and stops.
    done = fleet.rollout(V4, timeout=1)
    assert done.returncode != 0, output(done)
    assert (ROLLBACK, "changed", "pi-a") in results(done), output(done)
    assert all(host == "pi-a" for _, _, host in results(done)), output(done)
    rolled = a.store(model)
    assert rolled["serving"] == V2
    assert (rolled["versions"][V4]["state"], rolled["versions"][V4]["why"]) == ("rolled_back", "rolled back by hand")
    healthy = a.edge_agent("status", "--wait-healthy", model, V2, "--timeout", "60")  # the agent swapped back
    assert healthy.returncode == 0, healthy.stderr
    assert served_version(broker, a, model) == V2
    listed = a.edge_agent("models", "list")
    states = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
    assert states == {V4: "rolled_back", V3: "refused", V2: "serving", V1: "retired"}, listed.stdout

    # b was never touched by the failed rollouts: same process, V2, no record of V3 or V4.
    untouched = b.store(model)
    assert b.pid() == pids["pi-b"] and untouched["serving"] == V2
    assert V3 not in untouched["versions"] and V4 not in untouched["versions"]
    assert served_version(broker, b, model) == V2

    # The stand-in stops an agent with SIGTERM; the agent removes its pidfile on the way out.
    for device in (a, b):
        stopped = subprocess.run(
            [str(device.bin / "edge-agent-process"), "stop"], capture_output=True, text=True, timeout=60, check=False
        )
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not (device.state_dir / "agent.pid").exists()
