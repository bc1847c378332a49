"""A version swap under load: what a pull costs, and what the requests served meanwhile see.

Runs the real daemon on a real mosquitto, a registry of two signed versions of one artifact served by a
static HTTP server on loopback, a closed-loop client with WINDOW requests in flight; at half time
`edge-agent models pull` installs version 2 and signals the agent. Prints per-phase latency and the
pull's own timings. Run by hand:  .venv/bin/python bench/swap.py [--artifact FOLDER] [--seconds 20]
(default artifact: the tiny test encoder, built in seconds; pass a real one, e.g. the MiniLM default).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mqtt_peer import mosquitto  # noqa: E402
from edge_agent.contract import manifest as mf  # noqa: E402
from edge_agent.contract import signing  # noqa: E402
from trainer import registry  # noqa: E402

WINDOW = 8


def publish_versions(artifact: Path, reg: Path, keys: Path) -> None:
    private = signing.load_private(keys / signing.PRIVATE)
    for version in ("1.0.0", "2.0.0"):
        build = reg.parent / f"build-{version}"
        subprocess.run(["cp", "-r", str(artifact), str(build)], check=True)
        manifest = mf.read(build).model_copy(update={"version": version})
        mf.write(build, manifest, private)
        registry.add(build, reg)


def serve(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


class Load:
    def __init__(self, port: int, topic: str) -> None:
        self.sent: dict[int, float] = {}
        self.done: list[tuple[float, float, str]] = []  # (sent at, latency ms, version or error)
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._reply
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bench/replies", qos=1)
        self.client.loop_start()
        self.topic, self.next_id = topic, 0
        self.slots = threading.Semaphore(WINDOW)

    def _reply(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        now = time.perf_counter()
        with self.lock:
            sent = self.sent.pop(body["id"])
        self.done.append((sent, (now - sent) * 1000, body.get("version") or f"error {body['error']['code']}"))
        self.slots.release()

    def run(self, until: float) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bench/replies"
        while time.perf_counter() < until:
            self.slots.acquire()
            with self.lock:
                rid, self.next_id = self.next_id, self.next_id + 1
                self.sent[rid] = time.perf_counter()
            payload = json.dumps({"text": "turn on the lights in the kitchen", "id": rid})
            self.client.publish(self.topic, payload, qos=1, properties=props)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, help="artifact folder (default: the tiny test encoder)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    artifact = args.artifact
    if artifact is None:
        from trainer.encoder.tiny import build_tiny_artifact

        artifact = build_tiny_artifact(work / "tiny", name="tiny")
    name = mf.read(artifact).name
    signing.keygen(work / "keys")
    publish_versions(artifact, work / "registry", work / "keys")
    http, url = serve(work / "registry")
    try:
        with mosquitto(work) as port:
            done, pull_at, pull_s, line, rss = run(work, name, url, port, args.seconds)
    finally:
        http.terminate()
    swapped = min((t for t, _, v in done if v == "2.0.0"), default=float("inf"))
    report(done, pull_at, swapped, pull_s, line, rss)


def run(
    work: Path, name: str, url: str, port: int, seconds: float
) -> tuple[list[tuple[float, float, str]], float, float, str, str]:
    config = work / "agent.yaml"
    pub = work / "keys" / signing.PUBLIC
    config.write_text(json.dumps({"registry": {"url": url}, "trusted_keys": [str(pub)], "device_id": "bench"}))
    (work / "models.yaml").write_text(json.dumps({"models": [{"name": name}]}))
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(work / "state")}
    cli = [sys.executable, "-m", "edge_agent"]
    files = ["--config", str(config), "--models", str(work / "models.yaml")]
    subprocess.run([*cli, "models", "pull", name, "--version", "1.0.0", *files], env=env, check=True)
    agent = subprocess.Popen(
        [*cli, "run", *files, "--port", str(port), "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(3)  # a bench, not a test: let it connect and settle
        load = Load(port, f"edge-agent/bench/req/{name}")
        start = time.perf_counter()
        thread = threading.Thread(target=load.run, args=(start + seconds,))
        thread.start()
        time.sleep(seconds / 2)
        pull_at = time.perf_counter()
        pulled = subprocess.run([*cli, "models", "pull", name, *files], env=env, capture_output=True, text=True)
        pull_s = time.perf_counter() - pull_at
        thread.join()
        time.sleep(1)
        rss = _hwm(agent.pid)
    finally:
        agent.terminate()
        agent.wait(30)
    return load.done, pull_at, pull_s, pulled.stdout.strip() or pulled.stderr.strip(), rss


def _hwm(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return line.split(":")[1].strip()
    return "?"


def report(
    done: list[tuple[float, float, str]], pull_at: float, swapped: float, pull_s: float, line: str, hwm: str
) -> None:
    phases = {
        "before the pull": [d for d in done if d[0] < pull_at],
        "pull -> swap (CLI downloads, verifies, warms up)": [d for d in done if pull_at <= d[0] < swapped],
        "after the swap": [d for d in done if d[0] >= swapped],
    }
    print(f"pull: {line}\npull took {pull_s:.2f} s (CLI process: download + verify + load + warm-up + signal)")
    print(f"agent peak RSS (VmHWM): {hwm}\n")
    print(f"| phase | requests | errors | p50 ms | p99 ms | max ms | versions |\n|{'---|' * 7}")
    for label, rows in phases.items():
        lat = [ms for _, ms, _ in rows]
        errors = sum(v.startswith("error") for _, _, v in rows)
        versions = ",".join(sorted({v for _, _, v in rows}))
        p50, p99, top = percentile(lat, 0.5), percentile(lat, 0.99), max(lat, default=float("nan"))
        print(f"| {label} | {len(rows)} | {errors} | {p50:.1f} | {p99:.1f} | {top:.1f} | {versions} |")


if __name__ == "__main__":
    main()
