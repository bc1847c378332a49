"""systemd/edge-agent.service: it verifies, its exposure stays <= 2.0, and the agent lives under its sandbox.

`systemd-analyze verify` refuses a unit whose ExecStart= binary is missing (/opt/edge-agent/venv is the device's
install), so it checks a copy whose ExecStart= names this checkout's own `edge-agent` entry point; every other
line is the unit's own, and any warning (unknown key, unknown system call group, bad value) fails the test.
`systemd-analyze security --offline=yes` reads the unit file itself. The sandbox tests load the unit's seccomp
filters (MemoryDenyWriteExecute=, SystemCallFilter=, RestrictAddressFamilies=, ...) as systemd 252 builds them,
plus the kernel's PR_SET_MDWE, through tests/deploy/systemd/sandbox.py, then run real inference under them: the daemon
over TLS MQTT on a tiny ONNX artifact, and llama.cpp on a tiny GGUF.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config.settings import AgentSettings
from tests.deploy.systemd.sandbox import service_settings
from tests.support.agent import Agent, start_agent, write_models
from tests.support.broker import Auth, BrokerConfig, TlsFiles, client
from tests.support.gguf import build_tiny_gguf
from tests.support.pki import issue_server, make_ca

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "systemd" / "edge-agent.service"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
MAX_EXPOSURE = 2.0
DEVICE_EXEC = "/opt/edge-agent/venv/bin/edge-agent"


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: CI installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return exe


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), *args], capture_output=True, text=True, timeout=120)


def test_the_unit_verifies(tmp_path: Path) -> None:
    entry_point = Path(sys.executable).parent / "edge-agent"
    assert entry_point.is_file(), f"{entry_point}: the package is not installed in this environment"
    text = UNIT.read_text()
    assert DEVICE_EXEC in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(DEVICE_EXEC, str(entry_point)))
    out = analyze("verify", "--man=no", str(copy))
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr


def test_the_exposure_is_at_most_2() -> None:
    out = analyze("security", "--offline=yes", "--no-pager", f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT))
    found = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d)", out.stdout)
    assert found, out.stdout + out.stderr
    open_items = "\n".join(line for line in out.stdout.splitlines() if line.startswith("✗"))
    assert float(found.group(1)) <= MAX_EXPOSURE and out.returncode == 0, f"{found.group(0)}\n{open_items}"


def test_the_agent_keeps_its_state_in_the_first_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd sets $STATE_DIRECTORY to the StateDirectory= entries in order; the agent takes the first."""
    entries = service_settings(UNIT)["StateDirectory"][-1].split()
    assert entries[0] == "edge-agent" and "edge-agent/models" in entries
    monkeypatch.delenv("EDGE_AGENT_STATE_DIR", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", ":".join(f"/var/lib/{entry}" for entry in entries))
    assert AgentSettings().state_dir == Path("/var/lib/edge-agent")


def unit_environment() -> dict[str, str]:
    pairs = " ".join(service_settings(UNIT).get("Environment", [])).split()
    return dict(pair.split("=", 1) for pair in pairs)


def sandboxed(*command: str) -> list[str]:
    systemd_analyze()  # the filters are built from its system call groups
    return [sys.executable, str(SANDBOX), str(UNIT), "--", *command]


# Under the unit's filters: W+X memory and netlink sockets are refused (the filters are on), then onnxruntime,
# llama.cpp (under a grammar), a ctypes callback called from C (a libffi closure) and an SSL context all work.
PROBE = """
import ctypes, socket, ssl, sys
import numpy as np
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
assert libc.mmap(None, 4096, 7, 0x22, -1, 0) == ctypes.c_void_p(-1).value, "a W+X mapping was allowed"
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    raise AssertionError("an AF_NETLINK socket was allowed")
except OSError:
    pass
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
feeds = {i.name: np.ones((1, 8), dtype=np.int64) for i in session.get_inputs()}
print("onnx", [out.shape for out in session.run(None, feeds)])
import llama_cpp
llm = llama_cpp.Llama(sys.argv[2], n_ctx=128, n_threads=2, verbose=False)
grammar = llama_cpp.LlamaGrammar.from_string('root ::= "yes" | "no"', verbose=False)
print("gguf", llm("is it on?", max_tokens=4, temperature=0, grammar=grammar)["choices"][0]["text"])
compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
libc.qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
print("closure", list(numbers))
import paho.mqtt.client as mqtt
mqtt.Client(mqtt.CallbackAPIVersion.VERSION2).tls_set_context(ssl.create_default_context())
print("ssl", ssl.OPENSSL_VERSION)
"""


def test_onnxruntime_and_llama_cpp_run_under_the_units_filters(tiny_artifact: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the [gguf] extra (llama-cpp-python) is not installed")
    gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    command = sandboxed(sys.executable, "-c", PROBE, str(tiny_artifact / "model.onnx"), str(gguf))
    env = {**os.environ, **unit_environment(), "SANDBOX_VERBOSE": "1"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "MemoryDenyWriteExecute=yes" in out.stderr and "SystemCallFilter=" in out.stderr, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["onnx"].startswith("[(1, ") and lines["gguf"] in ("yes", "no"), out.stdout
    assert lines["closure"] == "[1, 2, 3, 4]", out.stdout


def test_the_daemon_serves_over_tls_under_the_units_filters(tiny_artifact: Path, tmp_path: Path) -> None:
    """`edge-agent run` started through the sandbox (filters hold across execve), TLS to a real mosquitto."""
    ca = make_ca(tmp_path, "ca")
    server = issue_server(tmp_path, ca, "broker", ["IP:127.0.0.1"])
    config = BrokerConfig(tls=TlsFiles(ca.cert, server.cert, server.key), user=getpass.getuser())
    broker = config.broker(tmp_path / "tls.conf", Auth(ca_file=ca.cert))
    wrapper = tmp_path / "python-sandboxed"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(sandboxed(sys.executable))} "$@"\n')
    wrapper.chmod(0o755)
    env = {**unit_environment(), "EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__CA_FILE": str(ca.cert)}
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    broker.start()
    agent: Agent | None = None
    try:
        agent = start_agent(broker, models, tmp_path, env=env, python=str(wrapper))
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), "the daemon runs without the unit's filters"
        with client(broker.port, auth=broker.auth) as c:
            c.subscribe("me/replies")
            c.publish(f"{agent.prefix}/req/tiny", '{"text": "turn off the lights", "id": "s1"}', "me/replies")
            body = c.get(topic="me/replies").json()
        assert body["id"] == "s1" and body["source"] in ("local", "local-fallback"), body
        assert agent.stop() == 0, agent.log.read_text()
    finally:
        if agent is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(10)
        broker.stop()


TEMPLATE = ROOT / "systemd" / "edge-agent@.service"
PER_INSTANCE = ("Description=", "ExecStart=", "WorkingDirectory=", "StateDirectory=", "EnvironmentFile=")


def settings_lines(unit: Path) -> list[str]:
    return [line for line in unit.read_text().splitlines() if line and not line.startswith("#")]


def test_the_template_unit_is_the_unit_but_for_its_instance_lines() -> None:
    """Several agents on one box (edge-agent@1, @2): one sandbox and limits; their own state, device id, port."""
    base, template = settings_lines(UNIT), settings_lines(TEMPLATE)
    assert [x for x in base if not x.startswith(PER_INSTANCE)] == [
        x for x in template if not x.startswith(PER_INSTANCE)
    ]
    own = {line.split("=", 1)[0]: line for line in template if line.startswith(PER_INSTANCE) and "%i" in line}
    assert own["ExecStart"].endswith("--device-id %H-%i")
    assert own["StateDirectory"] == "StateDirectory=edge-agent/%i edge-agent/%i/models"
    assert "EnvironmentFile=/etc/edge-agent/%i.env" in template  # its metrics port: required, not optional


def test_an_instance_of_the_template_verifies(tmp_path: Path) -> None:
    entry_point = Path(sys.executable).parent / "edge-agent"
    (tmp_path / TEMPLATE.name).write_text(TEMPLATE.read_text().replace(DEVICE_EXEC, str(entry_point)))
    out = analyze("verify", "--man=no", str(tmp_path / "edge-agent@1.service"))
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr


def test_an_instance_of_the_template_keeps_the_exposure_at_most_2(tmp_path: Path) -> None:
    copy = tmp_path / TEMPLATE.name
    copy.write_text(TEMPLATE.read_text())
    out = analyze("security", "--offline=yes", "--no-pager", f"--threshold={round(MAX_EXPOSURE * 10)}", str(copy))
    found = re.search(r"Overall exposure level for edge-agent@\S*: (\d+\.\d)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE and out.returncode == 0, found.group(0)
