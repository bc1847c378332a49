"""The device install on Python 3.10 (Ubuntu 22.04 / JetPack 6), in the `.venv-py310` scripts/bootstrap makes.

That venv holds `edge-agent[onnx]` alone, as a device does: the tests import, inspect and run the daemon in it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edge_agent.contract.manifest import read
from tests.support.agent import start_agent, write_models
from tests.support.broker import Broker, client
from tests.support.install import HEAVY, import_every_module

ROOT = Path(__file__).resolve().parent.parent.parent
VENV = ROOT / ".venv-py310"

INSTALLED = """
import json
from importlib import metadata
print(json.dumps([dist.metadata["Name"] for dist in metadata.distributions()]))
"""

READ_TOML = """
import sys
from pathlib import Path
from edge_agent.config.settings import read_mapping
from edge_agent.errors import ConfigError
print(read_mapping(Path(sys.argv[1])))
try:
    read_mapping(Path(sys.argv[2]))
except ConfigError as exc:
    print("ConfigError", exc)
"""

MISS_A_DEADLINE = """
import asyncio, sys, time
from pathlib import Path
from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.errors import Timeout
from edge_agent.runtimes.pool import ModelPool

async def main():
    pool = ModelPool.load(ModelsFile(models=[ModelEntry(name="m", path=Path(sys.argv[1]))]), threads=1, batch_max=1)
    pool.start()
    try:
        await pool.served["m"].predict("turn off the lights", deadline=time.monotonic())
    except Timeout as exc:
        print("Timeout:", exc)
    finally:
        await pool.stop()

asyncio.run(main())
"""


@pytest.fixture(scope="session")  # session: set up before (and so skips before) the session-wide tiny_artifact
def py310() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        why = f"{VENV} is missing: scripts/bootstrap makes it when Python 3.10 is found ($PYTHON310 or pyenv 3.10.13)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must test the 3.10 device install: {why}", pytrace=False)
        pytest.skip(why)
    return str(python)


def run(python: str, code: str, *args: str) -> str:
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_venv_is_python_310_with_the_device_install(py310: str) -> None:
    assert run(py310, "import sys; print(sys.version_info[:2])").strip() == "(3, 10)"
    installed = {name.lower().replace("_", "-") for name in json.loads(run(py310, INSTALLED))}
    assert {"edge-agent", "onnxruntime", "tokenizers", "tomli"} <= installed
    assert not installed & HEAVY, installed & HEAVY


def test_every_module_imports_on_310_and_loads_nothing_heavy(py310: str) -> None:
    """The gguf runtime needs the [gguf] extra (llama.cpp, a long source build): on 3.10 it is compiled only."""
    assert import_every_module(py310, lacking=("llama_cpp",)) == [
        "edge_agent.runtimes.gguf",
        "edge_agent.runtimes.llamacpp",
    ]


def test_a_toml_settings_file_reads_on_310(py310: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('device_id = "jetson"\n[mqtt]\nport = 1884\n')
    bad.write_text("device_id = \n")
    first, second = run(py310, READ_TOML, str(good), str(bad)).splitlines()
    assert first == "{'device_id': 'jetson', 'mqtt': {'port': 1884}}"
    assert second.startswith("ConfigError") and "not valid toml" in second


def test_a_missed_deadline_is_a_timeout_on_310(py310: str, tiny_artifact: Path) -> None:
    """3.10's asyncio.wait_for raises asyncio.TimeoutError, not yet the builtin TimeoutError (3.11 merged them)."""
    assert run(py310, MISS_A_DEADLINE, str(tiny_artifact)).startswith("Timeout: no answer from model m")


def test_the_daemon_on_310_answers_a_request(py310: str, broker: Broker, tiny_artifact: Path, tmp_path: Path) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    agent = start_agent(broker, models, tmp_path, "py310", python=py310)
    try:
        with client(broker.port) as c:
            c.subscribe("me/replies")
            c.publish(f"{agent.prefix}/req/tiny", '{"text": "turn off the lights", "id": "r1"}', "me/replies", b"7")
            msg = c.get(topic="me/replies")
    finally:
        assert agent.stop() == 0
    body, manifest = msg.json(), read(tiny_artifact)
    assert msg.correlation == b"7" and body["id"] == "r1" and body["source"] in ("local", "local-fallback")
    assert body["label"] in manifest.labels and 0 < body["confidence"] <= 1 and body["version"] == manifest.version


def test_home_assistant_discovery_on_310_keeps_its_sensors_up_to_date(
    py310: str, broker: Broker, tiny_artifact: Path, tmp_path: Path
) -> None:
    """The sensors' state goes out on a timer (asyncio.wait_for timing out, 3.10's own TimeoutError)."""
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = {"EDGE_AGENT_HOMEASSISTANT__DISCOVERY": "true", "EDGE_AGENT_HOMEASSISTANT__STATE_S": "1"}
    agent = start_agent(broker, models, tmp_path, "py310", python=py310, env=env)
    try:
        with client(broker.port) as c:
            c.subscribe(f"{agent.prefix}/ha/tiny/state")
            assert c.get(topic=f"{agent.prefix}/ha/tiny/state").json()["requests"] == 0
            c.publish(f"{agent.prefix}/req/tiny", '{"text": "turn off the lights"}', "me/replies")
            assert c.get(topic=f"{agent.prefix}/ha/tiny/state").json()["requests"] == 1
    finally:
        assert agent.stop() == 0
