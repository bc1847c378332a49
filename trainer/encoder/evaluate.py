"""Stage `evaluate`: how good the served model is, and how sure it may be before it asks the cloud.

Runs labelled JSONL through the agent's runtime, scores intents and entities, measures latency,
fits the temperature on dev and picks the escalation threshold that keeps `target` accuracy on the
requests the device answers itself. Writes `report.json` and `report.png`. The scoring itself is
`trainer.report`, shared with the causal path; what is here is how an ONNX artifact is asked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from edge_agent.contract import manifest as mf
from edge_agent.errors import TooLarge
from edge_agent.runtimes.onnx import OnnxRuntime
from trainer import metrics, records, stage
from trainer.encoder import familiarity, serving
from trainer.report import DEFAULT_TARGET, PLOT, REPORT, Outputs, calibrate, samples, section, write_report

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

WARMUP = 5


def run(
    model_dir: Path,
    dev: Path,
    out: Path,
    test: Path | None = None,
    target: float = DEFAULT_TARGET,
    train: Path | None = None,
    unseen: Path | None = None,
    fixed: tuple[str, float | None] | None = None,
) -> Path:
    """Calibrate on dev, then report dev (and test, with dev's temperature and rule). With the training
    file (and a graph that gives the pooled embedding), also fit the distance table and choose the
    escalation rule on dev, and on `unseen` (intents held out of training) when given."""
    manifest = serving.describe(model_dir)
    runtime = serving.open_runtime(model_dir, manifest)
    out.mkdir(parents=True, exist_ok=True)
    dev_out = infer(runtime, manifest, dev)
    temperature, threshold = calibrate(dev_out, manifest.labels, target)
    rule: dict[str, Any] | None = None
    if train is not None and manifest.onnx is not None and manifest.onnx.embedding:
        rule = familiarity.fit(runtime, manifest, train, out / familiarity.TABLE)
        dev_out = familiarity.scored(runtime, out, rule, dev_out)  # the dev figures below use the rule too
        held = infer(runtime, manifest, unseen) if unseen is not None else None  # build checked its intents
        threshold, rule = familiarity.choose(runtime, manifest, out, rule, dev_out, held, temperature, target, fixed)
    limit = rule["threshold"] if rule else None
    report: dict[str, Any] = {
        "target_accuracy": target,
        "temperature": temperature,
        "threshold": threshold,
        "ood": rule,
        "dev": section(dev_out, manifest.labels, temperature, threshold, limit),
    }
    if test:
        test_out = familiarity.scored(runtime, out, rule, infer(runtime, manifest, test))
        report["test"] = section(test_out, manifest.labels, temperature, threshold, limit)
    write_report(report, out / REPORT, out / PLOT)
    results = {
        "temperature": temperature,
        "thresholds": {"escalate": threshold, "target_accuracy": target},
        "metrics": {split: report[split]["headline"] for split in ("dev", "test") if split in report},
        "samples": samples(dev_out, manifest.labels, temperature),
        **({"ood": rule} if rule else {}),
    }
    inputs = {"model": model_dir / manifest.file("model").path, "dev": dev, **({"test": test} if test else {})}
    inputs.update({k: v for k, v in (("train", train), ("unseen", unseen)) if v is not None})
    stage.write(out, "evaluate", {"target_accuracy": target}, inputs, results)
    return out


def standalone(
    folder: Path,
    data: Path,
    report_path: Path,
    calibrate_here: bool = False,
    target: float = DEFAULT_TARGET,
    write_manifest: bool = False,
    key: Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """`edge-trainer evaluate ARTIFACT --data FILE`: the artifact's own temperature and threshold, or
    (with `calibrate_here`) ones fitted on FILE, optionally written back into the manifest."""
    manifest = serving.describe(folder)
    out = infer(serving.open_runtime(folder, manifest), manifest, data)
    temperature, threshold = manifest.temperature, manifest.thresholds.escalate
    limit = manifest.max_distance
    if calibrate_here:
        temperature, threshold = calibrate(out, manifest.labels, target)
    report: dict[str, Any] = {
        "artifact": f"{manifest.name} {manifest.version}",
        "temperature": temperature,
        "threshold": threshold,
        "data": section(out, manifest.labels, temperature, threshold, limit),
    }
    write_report(report, report_path, report_path.with_suffix(".png"))
    if write_manifest and (folder / mf.MANIFEST).is_file():
        updated = manifest.model_copy(
            update={
                "temperature": temperature,
                "thresholds": mf.Thresholds(escalate=threshold, target_accuracy=target if calibrate_here else None),
                "metrics": {**manifest.metrics, "dev": report["data"]["headline"]},
            }
        )
        mf.write(folder, updated, key)
    return report


def infer(runtime: OnnxRuntime, manifest: mf.Manifest, path: Path) -> Outputs:
    """Every record as its own request, so each `predict` is also a latency sample of one request.
    Dynamic int8 (`manifest.onnx.batch_independent` false) could not be scored any other way: its
    activation scales come from the whole call, so batch neighbours and padding change the answers;
    static int8 answers the same alone or batched."""
    recs = records.read(path)
    logits = np.full((len(recs), len(manifest.labels)), np.nan, dtype=np.float64)
    mentions: list[list[metrics.Mention]] = [[] for _ in recs]
    timings: list[float] = []
    distances = np.full(len(recs), np.nan)
    for rec in recs[:WARMUP]:
        _request(runtime, rec.text)
    for i, rec in enumerate(tqdm(recs, desc=f"evaluate {path.name}", leave=False, unit="request")):
        started = time.perf_counter()
        answer = _request(runtime, rec.text)
        if answer is not None:
            timings.append((time.perf_counter() - started) * 1000)
            logits[i], (mentions[i], distance) = runtime.logits([rec.text])[0], answer
            distances[i] = np.nan if distance is None else distance
    return Outputs(
        file=path,
        texts=[r.text for r in recs],
        gold=[r.intent for r in recs],
        gold_mentions=[[(e.type, e.value) for e in r.entities] for r in recs],
        logits=logits,
        mentions=mentions,
        latency_ms=timings,
        distances=distances if runtime.distance is not None else None,
    )


def _request(runtime: OnnxRuntime, text: str) -> tuple[list[metrics.Mention], float | None] | None:
    """The entities and distance of one request, or None when the model refuses it (too long)."""
    try:
        prediction = runtime.predict([text])[0]
    except TooLarge:
        return None
    return [(e.type, e.value) for e in prediction.entities], prediction.distance
