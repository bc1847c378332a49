"""The evaluate stage's distance part: fit the distance table on the training texts as the served int8
model embeds them, score dev (and unseen intents, and test) with it, and choose the escalation rule.

The table is fitted on what the device computes (the int8 graph's pooled output), so a distance on the
device means what it meant here. The rule itself is chosen by `trainer.ood`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_agent.contract import manifest as mf
from edge_agent.errors import TooLarge
from edge_agent.runtimes import distance
from edge_agent.runtimes.onnx import OnnxRuntime
from trainer import ood, records
from trainer.report import Outputs, confidences

TABLE = "ood.npy"
BATCH = 64


def embeddings(runtime: OnnxRuntime, texts: list[str]) -> np.ndarray:
    """Pooled embeddings, NaN rows for texts the model refuses; one text per call unless the graph is
    batch independent (dynamic int8 must be asked one request at a time, as it is served)."""
    batch = BATCH if runtime.io.batch_independent else 1
    rows: list[np.ndarray | None] = []
    for start in tqdm(range(0, len(texts), batch), desc="embeddings", leave=False):
        chunk = texts[start : start + batch]
        try:
            rows.extend(runtime.embeddings(chunk))
        except TooLarge:
            rows.extend(_alone(runtime, text) for text in chunk)
    width = next((len(r) for r in rows if r is not None), 1)
    return np.stack([np.full(width, np.nan) if r is None else r for r in rows]) if rows else np.zeros((0, width))


def _alone(runtime: OnnxRuntime, text: str) -> np.ndarray | None:
    try:
        return runtime.embeddings([text])[0]  # type: ignore[no-any-return]
    except TooLarge:
        return None


def fit(runtime: OnnxRuntime, manifest: mf.Manifest, train: Path, path: Path) -> dict[str, Any]:
    """Write the distance table for `train` (its known intents' texts) to `path`."""
    recs = [r for r in records.read(train) if r.intent in manifest.labels]
    x = embeddings(runtime, [r.text for r in recs])
    labels = np.array([manifest.labels.index(r.intent) for r in recs])
    keep = ~np.isnan(x).any(axis=1)
    distance.save(distance.fit(x[keep], labels[keep], len(manifest.labels)), path)
    return {"file": path.name, "fitted_on": int(keep.sum())}


def scored(runtime: OnnxRuntime, folder: Path, rule: dict[str, Any] | None, out: Outputs) -> Outputs:
    """`out` with its rows' distances (a refused text's is NaN), when there is a table."""
    if rule is None:
        return out
    scorer = distance.Distance(folder / rule["file"], out.logits.shape[1])
    x = embeddings(runtime, out.texts)
    far = np.full(len(x), np.nan)
    keep = ~np.isnan(x).any(axis=1)
    if keep.any():
        far[keep] = scorer.distances(x[keep])
    return dataclasses.replace(out, distances=far)


def choose(
    runtime: OnnxRuntime,
    manifest: mf.Manifest,
    folder: Path,
    rule: dict[str, Any],
    dev: Outputs,
    unseen: Outputs | None,
    temperature: float,
    target: float,
    fixed: tuple[str, float | None] | None = None,
) -> tuple[float, dict[str, Any]]:
    """(confidence threshold, the manifest's `ood` section): every rule measured on dev, one chosen
    (or the `fixed` one); `dev` already `scored`; `unseen` are requests of intents held out of training
    (never test)."""
    conf, correct = confidences(dev, manifest.labels, temperature)
    dist = _finite(dev)
    extra = (fixed[1],) if fixed is not None and fixed[1] is not None else ()
    rows = ood.candidates(conf, correct, dist, target, ood.QUANTILES + extra)
    held: tuple[np.ndarray, np.ndarray] | None = None
    figures: dict[str, Any] = {"target_accuracy": target, "candidates": rows}
    if unseen is not None:
        unseen = scored(runtime, folder, rule, unseen)
        held = (confidences(unseen, manifest.labels, temperature)[0], _finite(unseen))
        figures["unseen"] = {
            "file": unseen.file.name,
            "examples": len(unseen.texts),
            "sha256": mf.sha256_file(unseen.file),
        }
        figures["auroc"] = {"softmax": ood.auroc(-conf, -held[0]), "mahalanobis": ood.auroc(dist, held[1])}
    chosen = ood.choose(rows, held, fixed)
    figures["chosen"] = chosen
    section = {**rule, "rule": chosen["rule"], "threshold": chosen["max_distance"], "dev": figures}
    return float(chosen["threshold"]), section


def _finite(out: Outputs) -> np.ndarray:
    """Distances with a refused text's NaN as infinitely far (it escalates whatever the rule)."""
    assert out.distances is not None
    far: np.ndarray = np.nan_to_num(out.distances, nan=np.inf)
    return far
