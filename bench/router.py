"""Router: what escalation buys (risk-coverage, system accuracy) and what it costs (overhead).

Run by hand:  .venv/bin/python bench/router.py --artifact artifacts/hwu64 [--cloud-accuracy 0.95] [-n 300]
Without --artifact only the overhead part runs, on a tiny artifact built in seconds.
Goals (issue 6): at the calibrated threshold <= 12% escalated with >= 98% accuracy on the rest;
an escalation to a loopback cloud costs <= 2 ms p50 beyond the cloud's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.teacher import teacher  # noqa: E402  (run as a script)
from edge_agent.config.models_file import ModelsFile  # noqa: E402
from edge_agent.config.sections import CloudSettings  # noqa: E402
from edge_agent.config.settings import AgentSettings  # noqa: E402
from edge_agent.contract.manifest import load  # noqa: E402
from edge_agent.contract.messages import Inbound  # noqa: E402
from edge_agent.ops import logs  # noqa: E402
from edge_agent.routing.cloud import CloudClient, answer_schema  # noqa: E402
from edge_agent.routing.router import Router  # noqa: E402
from edge_agent.runtimes.onnx import OnnxRuntime  # noqa: E402
from edge_agent.runtimes.pool import ModelPool  # noqa: E402
from edge_agent.serving.handler import Handler  # noqa: E402
from edge_agent.transport.outcome import Reply  # noqa: E402
from trainer.calibration import selective  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "hwu64" / "test.jsonl"
OUT = ROOT / "bench" / "out"
SHARES = [0.0, 0.02, 0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30]


def main() -> None:
    args = parse_args()
    logs.configure("warning")
    print(
        f"machine: {platform.machine()} {platform.system()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n"
    )
    if args.artifact:
        quality(args.artifact, args.data, args.cloud_accuracy, args.seed)
    else:
        print("(no --artifact: risk-coverage skipped)\n")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or tiny(Path(tmp))
        overhead(artifact, args.n, Path(tmp))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="trained ONNX artifact (its labels must match --data)")
    parser.add_argument("--data", type=Path, default=DATA, help="labelled JSONL (default: HWU64 test)")
    parser.add_argument("--cloud-accuracy", type=float, default=0.95, help="simulated cloud stand-in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=300, help="requests per overhead measurement")
    return parser.parse_args()


# -- risk-coverage and system accuracy ---------------------------------------------------------
def quality(artifact: Path, data: Path, cloud_accuracy: float, seed: int) -> None:
    manifest = load(artifact)
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    runtime = OnnxRuntime(artifact, manifest, threads=2)
    preds = [p for i in range(0, len(rows), 32) for p in runtime.predict([r["text"] for r in rows[i : i + 32]])]
    confidence = np.array([p.confidence for p in preds])
    correct = np.array([p.label == r["intent"] for p, r in zip(preds, rows, strict=True)], dtype=float)
    cloud_right = np.random.default_rng(seed).random(len(rows)) < cloud_accuracy
    calibrated = manifest.thresholds.escalate
    table = [row(confidence, correct, cloud_right, t) for t in thresholds(confidence, calibrated)]
    print(f"## risk-coverage: {artifact.name} v{manifest.version} on {data.name} ({len(rows)} texts)")
    print(f"local accuracy {correct.mean():.4f}; cloud stand-in accuracy {cloud_accuracy} (simulated, seed {seed})\n")
    print("| threshold | escalated | local accuracy on kept | system accuracy | |")
    print("|---:|---:|---:|---:|---|")
    for r in table:
        mark = "**calibrated**" if r["threshold"] == round(calibrated, 6) else ""
        print(
            f"| {r['threshold']:.4f} | {r['escalated']:.1%} | {r['kept_accuracy']:.2%} | {r['system']:.2%} | {mark} |"
        )
    print("\ngoal at the calibrated threshold: <= 12% escalated, >= 98% on the rest\n")
    plot(confidence, correct, cloud_right, calibrated)


def thresholds(confidence: np.ndarray, calibrated: float) -> list[float]:
    """Thresholds that escalate the SHARES of traffic, plus the manifest's calibrated one."""
    found = {float(np.quantile(confidence, share)) if share else 0.0 for share in SHARES}
    return sorted(found | {calibrated})


def row(confidence: np.ndarray, correct: np.ndarray, cloud_right: np.ndarray, threshold: float) -> dict[str, float]:
    """One threshold: what the local model keeps, and the accuracy once the cloud takes the rest."""
    out = selective(confidence, correct, threshold)
    kept = confidence >= threshold
    out["system"] = float(np.where(kept, correct, cloud_right).mean())
    return out


def plot(confidence: np.ndarray, correct: np.ndarray, cloud_right: np.ndarray, calibrated: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.unique(np.concatenate([np.quantile(confidence, np.linspace(0, 0.6, 61)), [calibrated]]))
    rows = [row(confidence, correct, cloud_right, t) for t in grid]
    share = [r["escalated"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(share, [r["kept_accuracy"] for r in rows], label="local answers kept")
    ax.plot(share, [r["system"] for r in rows], label="system (cloud stand-in takes the rest)")
    cal = row(confidence, correct, cloud_right, calibrated)
    ax.scatter([cal["escalated"]], [cal["kept_accuracy"]], color="black", zorder=3, label="calibrated threshold")
    ax.axvline(0.12, color="grey", linestyle=":")
    ax.axhline(0.98, color="grey", linestyle=":")
    ax.set_xlabel("share escalated to the cloud")
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT / "router_risk_coverage.png", dpi=120)
    print(f"plot: {OUT / 'router_risk_coverage.png'}\n")


# -- escalation overhead -----------------------------------------------------------------------
def tiny(tmp: Path) -> Path:
    from trainer.encoder.tiny import build_tiny_artifact

    return build_tiny_artifact(tmp / "tiny")


def overhead(artifact: Path, n: int, tmp: Path) -> None:
    """p50 of a request through the handler that escalates, minus local-only p50, minus a bare cloud call."""
    labels = load(artifact).labels
    with teacher(labels[0]) as url:
        res = asyncio.run(_measure(artifact, url, n, tmp))
    local, escalated, bare, inside = (statistics.median(res[k]) for k in ("local", "escalated", "bare", "inside"))
    cost = escalated - local - bare
    print(f"## escalation overhead ({artifact.name}, loopback cloud, n={n} each, p50 in ms)\n")
    print("| measure | p50 (ms) |")
    print("|---|---:|")
    print(f"| request kept local, through the handler | {local:.3f} |")
    print(f"| request escalated, through the handler | {escalated:.3f} |")
    print(f"| bare cloud call (httpx POST, same body and server) | {bare:.3f} |")
    print(f"| **overhead** = escalated - local - bare cloud | **{cost:.3f}** (goal <= 2) |")
    print(f"| reply latency - timings.local_ms - timings.cloud_ms | {inside:.3f} |\n")


async def _measure(artifact: Path, url: str, n: int, tmp: Path) -> dict[str, list[float]]:
    models = ModelsFile.model_validate({"models": [{"name": "m", "path": str(artifact), "threshold": 1.0}]})
    cloud = CloudSettings(base_url=url, model="teacher", retries=0)
    settings = AgentSettings(device_id="b", models_file=tmp / "m.yaml", state_dir=tmp / "state", cloud=cloud)
    models.models[0].collect_feedback = False
    models.models[0].threshold = 1.01  # above any confidence (unvalidated on purpose): every request escalates
    pool = ModelPool.load(models, 2, 1)
    pool.start()
    client = CloudClient(cloud)
    handler = Handler(settings, models, pool, Router(settings, models, client))
    texts = [f"turn {'on' if i % 2 else 'off'} the lights in room {i}" for i in range(n)]
    res: dict[str, list[float]] = {"local": [], "escalated": [], "bare": [], "inside": []}
    manifest = load(artifact)
    body = client.request_body(manifest, answer_schema(manifest), "turn on the lights")
    async with httpx.AsyncClient() as bare:
        for text in texts[:20]:  # warm-up: sessions, connection pool, caches
            await ask(handler, text, "auto")
            await bare.post(f"{url}/chat/completions", json=body)
        for text in texts:
            res["local"].append((await ask(handler, text, "local"))[0])
            ms, reply = await ask(handler, text, "auto")
            assert reply["source"] == "cloud", reply
            res["escalated"].append(ms)
            res["inside"].append(reply["latency_ms"] - reply["timings"]["local_ms"] - reply["timings"]["cloud_ms"])
            t0 = time.perf_counter()
            (await bare.post(f"{url}/chat/completions", json=body)).json()
            res["bare"].append((time.perf_counter() - t0) * 1000)
    await client.aclose()
    await pool.stop()
    return res


async def ask(handler: Handler, text: str, route: str) -> tuple[float, dict[str, Any]]:
    payload = json.dumps({"text": text, "route": route}).encode()
    t0 = time.perf_counter()
    out = await handler.handle(Inbound("edge-agent/b/req/m", payload, "r", received=time.monotonic()))
    ms = (time.perf_counter() - t0) * 1000
    assert isinstance(out, Reply), out
    return ms, json.loads(out.out.payload)


if __name__ == "__main__":
    main()
