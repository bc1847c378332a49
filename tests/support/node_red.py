"""Node-RED 4 as a user runs it: `npm ci` under examples/node-red (scripts/bootstrap), a userDir, a flow file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import ROOT
from tests.support.broker import free_port

FOLDER = ROOT / "examples" / "node-red"
EXAMPLE = FOLDER / "edge-agent.json"  # the flow users import, deployed as it is
RED_JS = FOLDER / "node_modules" / "node-red" / "red.js"

SETTINGS = """module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    flowFile: "flows.json",
    credentialSecret: false,
    telemetry: {{ enabled: false, updateNotification: false }},
    diagnostics: {{ enabled: false, ui: false }},
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }} }},
    logging: {{ console: {{ level: "info", metrics: false, audit: false }} }},
}};
"""


def node_red_js() -> Path:
    """red.js of the pinned Node-RED; skips where it is not installed, fails under CI (CI installs it)."""
    node = shutil.which("node")
    if node and RED_JS.exists():
        return RED_JS
    why = f"node ({node or 'missing'}) or Node-RED ({RED_JS.relative_to(ROOT)}) missing: run scripts/bootstrap"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI must test the Node-RED example: {why}", pytrace=False)
    pytest.skip(why)


def example_flows(broker_port: int) -> list[dict[str, Any]]:
    """The example as users import it, its broker node pointed at the test's mosquitto (nothing else changed)."""
    flows: list[dict[str, Any]] = json.loads(EXAMPLE.read_text())
    for node in flows:
        if node["type"] == "mqtt-broker":
            node.update(broker="127.0.0.1", port=str(broker_port))
    return flows


@dataclass
class NodeRed:
    """A Node-RED process on loopback and its admin API (no auth: loopback only)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        """POST a string as text/plain, anything else as JSON; the status and the JSON answer (an HTTP error
        status is an answer here, not an exception)."""
        data, kind = (body, "text/plain") if isinstance(body, str) else (json.dumps(body), "application/json")
        req = urllib.request.Request(self.url(path), data.encode(), {"Content-Type": kind})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_admin(self, timeout: float = 60.0) -> None:
        """Block until the admin API answers GET /flows (the runtime has loaded the flow file)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                self.get("/flows")
                return
            time.sleep(0.1)  # polling a starting process, bounded by `timeout`
        raise AssertionError(f"Node-RED never answered (exit {self.proc.poll()}):\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def node_red(folder: Path, flows: list[dict[str, Any]]) -> Iterator[NodeRed]:
    """Node-RED with a fresh userDir whose flow file is `flows`; stopped on exit."""
    red_js = node_red_js()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (folder / "settings.js").write_text(SETTINGS.format(port=port))
    (folder / "flows.json").write_text(json.dumps(flows, indent=2))
    log = folder / "node-red.log"
    cmd = [shutil.which("node") or "node", str(red_js), "--settings", str(folder / "settings.js")]
    proc = subprocess.Popen([*cmd, "--userDir", str(folder)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    red = NodeRed(proc, port, log)
    try:
        red.wait_admin()
        yield red
    finally:
        red.stop()
