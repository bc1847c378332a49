"""Throughput through MQTT against the model's own, and latency against offered load.

Run by hand:  .venv/bin/python bench/throughput.py [--artifact artifacts/iot-intents] [-n 6000]

Side by side, one run, same model and texts (HWU64 test texts, cycled):
- raw: the agent's ONNX runtime in this process (tokenization included), one text at a time and in
  batches of 32: what onnxruntime alone can do on these cores;
- through the agent: `edge-agent run` as a subprocess behind mosquitto, a closed-loop client keeping
  `--window` requests in flight (MQTT 5, QoS 1): sustained answered requests/s, for each batch_max;
- latency against offered load: an open-loop client publishing at a fixed rate (a share of the
  sustained figure), p50/p99 of the round trip at each rate; plot in bench/out/throughput.png.

Goals (issue 13): sustained >= 80% of raw batched; p99 at 50% of that load <= 4x the p50 at low load.
Everything shares the machine's cores: the client, mosquitto, the agent and its onnxruntime threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mqtt_peer import mosquitto, no_delay  # noqa: E402
from bench.overhead import start_agent, texts  # noqa: E402
from edge_agent.contract.manifest import load  # noqa: E402
from edge_agent.runtimes.onnx import OnnxRuntime  # noqa: E402

TOPIC, REPLIES = "edge-agent/bench/req/m", "bench/replies"
LOADS = (0.05, 0.25, 0.5, 0.75, 0.9, 1.0, 1.2)


def raw(artifact: Path, batch: list[str], threads: int) -> dict[str, float]:
    """Texts/s of the runtime alone, one at a time and 32 at a time (best of 2 passes each)."""
    rt = OnnxRuntime(artifact, load(artifact), threads)
    rt.predict(batch[:64])
    out = {}
    for size in (1, 32):
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            for start in range(0, len(batch), size):
                rt.predict(batch[start : start + size])
            best = max(best, len(batch) / (time.perf_counter() - t0))
        out[f"batch {size}"] = best
    rt.close()
    return out


class Load:
    """One MQTT 5 client: publishes requests (QoS 1, response topic) and times each reply by its id."""

    def __init__(self, port: int) -> None:
        self.sent: dict[int, float] = {}
        self.took: dict[int, float] = {}
        self.errors = 0
        self.lock = threading.Condition()
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.ResponseTopic = REPLIES
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_socket_open = no_delay
        self.client.on_message = self._reply
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        peer_ready = threading.Event()
        self.client.on_subscribe = lambda *_: peer_ready.set()
        self.client.subscribe(REPLIES, qos=1)
        peer_ready.wait(10)

    def _reply(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(msg.payload)
        with self.lock:
            self.took[body["id"]] = (now - self.sent[body["id"]]) * 1000
            self.errors += "label" not in body
            self.lock.notify_all()

    def send(self, rid: int, text: str) -> None:
        with self.lock:
            self.sent[rid] = time.perf_counter()
        self.client.publish(TOPIC, json.dumps({"text": text, "id": rid}), qos=1, properties=self.props)

    def wait(self, count: int, timeout: float = 120.0) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.took) >= count, timeout):
                raise TimeoutError(f"{len(self.took)} of {count} replies")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sustained(port: int, batch: list[str], window: int) -> float:
    """Answered requests/s with `window` in flight (closed loop), after a warm-up of 500."""
    load = Load(port)
    warm = 500
    for i, text in enumerate(batch):
        if i == warm:
            load.wait(warm)
            t0 = time.perf_counter()
        load.wait(i - window + 1) if i >= window else None
        load.send(i, text)
    load.wait(len(batch))
    rate = (len(batch) - warm) / (time.perf_counter() - t0)
    assert load.errors == 0, f"{load.errors} error replies"
    load.close()
    return rate


@dataclass
class Point:
    offered: float
    achieved: float
    p50: float
    p99: float
    lost: int  # no reply: beyond what the agent holds back, the broker's per-client queue overflows


def open_loop(port: int, batch: list[str], rate: float, seconds: float) -> Point:
    """Publish at `rate`/s for `seconds` (paced, not waiting for replies); latency of every reply."""
    load = Load(port)
    n = max(50, int(rate * seconds))
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing an open-loop load generator
        load.send(i, batch[i % len(batch)])
    with contextlib.suppress(TimeoutError):  # overload: what never came back is counted, not waited for
        load.wait(n, timeout=seconds + 30)
    with load.lock:
        took = np.array(list(load.took.values()))
        last = max(load.sent[i] + load.took[i] / 1000 for i in load.took)
    load.close()
    point = Point(
        rate, len(took) / (last - t0), float(np.percentile(took, 50)), float(np.percentile(took, 99)), n - len(took)
    )
    print(f"offered {rate:.0f}/s: {point}", file=sys.stderr)
    return point


def start(models: Path, port: int, tmp: Path, threads: int, batch_max: int, wait_ms: float) -> subprocess.Popen[bytes]:
    env = {
        "EDGE_AGENT_BATCH_MAX": str(batch_max),
        "EDGE_AGENT_BATCH_WAIT_MS": str(wait_ms),
        "EDGE_AGENT_STATE_DIR": str(tmp / f"state-{batch_max}-{wait_ms}"),
        "EDGE_AGENT_METRICS__ENABLED": "false",
    }
    return start_agent(models, port, tmp, threads, env=env)[0]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(20)


def plot(points: list[Point], low_p50: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.achieved for p in points], [p.p50 for p in points], "o-", label="p50")
    ax.plot([p.achieved for p in points], [p.p99 for p in points], "s-", label="p99")
    ax.axhline(4 * low_p50, color="grey", ls="--", lw=0.8, label="4 x p50 at low load")
    ax.set_xlabel("answered requests/s (offered: a share of the sustained maximum)")
    ax.set_ylabel("round trip via mosquitto (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("edge-agent: latency against load")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "iot-intents")
    parser.add_argument("-n", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=128, help="requests in flight for the sustained figure")
    parser.add_argument("--batch-max", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=6.0, help="per offered-load point")
    args = parser.parse_args()
    manifest = load(args.artifact)
    quant = manifest.onnx.quantization if manifest.onnx else None
    batch = texts(args.n)
    base = raw(args.artifact, batch[:3000], args.threads)
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmpdir, mosquitto(Path(tmpdir)) as port:
        tmp = Path(tmpdir)
        models = tmp / "models.yaml"
        models.write_text(yaml.safe_dump({"models": [{"name": "m", "path": str(args.artifact.resolve())}]}))
        for size in args.batch_max:
            proc = start(models, port, tmp, args.threads, size, args.batch_wait_ms)
            rates[size] = sustained(port, batch, args.window)
            print(f"batch_max {size}: {rates[size]:.0f} answered/s", file=sys.stderr)
            stop(proc)
        best = max(rates, key=lambda k: rates[k])
        proc = start(models, port, tmp, args.threads, best, args.batch_wait_ms)
        points = [open_loop(port, batch, share * rates[best], args.seconds) for share in LOADS]
        stop(proc)
    report(args, quant, base, rates, best, points)
    plot(points, points[0].p50, ROOT / "bench" / "out" / "throughput.png")


def report(
    args: argparse.Namespace,
    quant: str | None,
    base: dict[str, float],
    rates: dict[int, float],
    best: int,
    points: list[Point],
) -> None:
    print(
        f"# bench/throughput.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()} {os.cpu_count()} cores  "
        f"artifact {args.artifact.name} (int8 {quant or 'dynamic'})  threads {args.threads}  window {args.window}"
    )
    print("| path | texts/s | of raw batched |")
    print("|---|---:|---:|")
    top = base["batch 32"]
    for name, value in base.items():
        print(f"| raw runtime in process, {name} | {value:.0f} | {value / top:.0%} |")
    for size, value in rates.items():
        goal = " (goal >= 80%)" if size == best else ""
        print(f"| through mosquitto + agent, batch_max {size} | {value:.0f} | {value / top:.0%}{goal} |")
    print()
    print(f"Latency against offered load (batch_max {best}; offered = share of {rates[best]:.0f}/s):")
    print("| offered share | offered /s | answered /s | p50 ms | p99 ms | no reply |")
    print("|---:|---:|---:|---:|---:|---:|")
    for share, p in zip(LOADS, points, strict=True):
        print(f"| {share:.0%} | {p.offered:.0f} | {p.achieved:.0f} | {p.p50:.2f} | {p.p99:.2f} | {p.lost} |")
    half = points[LOADS.index(0.5)]
    ratio = half.p99 / points[0].p50
    print(f"\np99 at 50% load / p50 at low load = {half.p99:.2f} / {points[0].p50:.2f} = {ratio:.1f}x (goal <= 4x)")


if __name__ == "__main__":
    main()
