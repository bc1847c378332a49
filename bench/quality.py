"""Quality of the encoder path on HWU64, measured the way the device serves it. Run by hand:

    python bench/quality.py                  # full run: two trainings (all intents, 8 held out)
    python bench/quality.py --reuse          # re-measure existing artifacts under bench/out/

Trains on the full HWU64 train split (64 intents), tunes and calibrates on dev only; the test split
is only measured, never used to choose anything. Prints one table; writes reports and PNGs under
bench/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.contract import manifest as mf  # noqa: E402  (after the path tweak, run as a script)
from trainer import calibration, metrics, ood, records, report, stage  # noqa: E402
from trainer.encoder import evaluate, familiarity, publish, serving  # noqa: E402
from trainer.encoder.build import EncoderBuild  # noqa: E402
from trainer.encoder.build import build as build_artifact  # noqa: E402
from trainer.encoder.recipe import EncoderRecipe  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
HWU = DATASETS / "hwu64"
SLURP_DEV = DATASETS / "slurp" / "dev.jsonl"
# Held out of training for the unknown-intent check: the 8 intents with the smallest
# sha256("hwu64-unknown-v1|" + intent), a fixed draw made before any model was trained.
HELD_OUT = [
    "audio_volume_mute",
    "general_dontcare",
    "iot_hue_lightup",
    "lists_createoradd",
    "lists_remove",
    "music_settings",
    "recommendation_locations",
    "takeaway_order",
]
BARS = {
    "int8_accuracy": 0.930,
    "int8_gap": 0.005,
    "entity_f1": 0.80,
    "kept_accuracy": 0.98,
    "escalated": 0.12,
    "unknown_escalated": 0.90,
    "wall_minutes": 15.0,
}


def main() -> int:
    args = parse_args()
    reuse: bool | str = "again" if args.reevaluate else args.reuse
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    recipe = EncoderRecipe(**json.loads(args.recipe)) if args.recipe else EncoderRecipe(threads=args.threads)
    rows: dict[str, Any] = {}
    rule = None
    if not args.skip_unknown:  # first: the 56-intent build chooses the escalation rule on its dev + unseen dev
        rows.update(measure_unknown(out, recipe, reuse))
        rule = (rows["rule"], rows["rule_quantile"])
    full, wall = build(out, "hwu64", HWU / "train.jsonl", HWU / "dev.jsonl", recipe, reuse, rule=rule)
    rows.update(measure_full(out, full, wall))
    print_table(rows)
    (out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--reuse", action="store_true", help="measure existing artifacts, do not train")
    parser.add_argument(
        "--reevaluate", action="store_true", help="evaluate + publish the builds again from their export stages"
    )
    parser.add_argument("--skip-unknown", action="store_true", help="skip the held-out-intents training")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0 = default)")
    parser.add_argument("--recipe", help="JSON object of EncoderRecipe fields (default: the trainer's defaults)")
    return parser.parse_args()


def build(
    out: Path,
    name: str,
    train: Path,
    dev: Path,
    recipe: EncoderRecipe,
    reuse: bool | str,
    test: Path | None = HWU / "test.jsonl",
    unseen: Path | None = None,
    rule: tuple[str, float | None] | None = None,
) -> tuple[Path, float]:
    """Train, export, calibrate on dev, publish; returns the artifact and the wall time in seconds.
    `reuse`: True measures what is there; "again" evaluates and publishes it again first."""
    artifact = out / name
    if reuse and (artifact / mf.MANIFEST).is_file():
        if reuse == "again":  # the build's own export stage, evaluated and published again: no training
            work = stage.work_dir(name, artifact)
            run = evaluate.run(work / "export", dev, work / "evaluate", test, 0.98, train, unseen, rule)
            publish.run(work / "export", artifact, name, run, mf.read(artifact).version)
        return artifact, json.loads((out / f"{name}.wall.json").read_text())["seconds"]
    started = time.monotonic()
    options = EncoderBuild(name=name, out=artifact, test=test, unseen=unseen, rule=rule)
    build_artifact(train, dev, options, recipe)
    seconds = time.monotonic() - started
    (out / f"{name}.wall.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return artifact, seconds


def measure_full(out: Path, artifact: Path, wall: float) -> dict[str, Any]:
    manifest = mf.load(artifact)
    int8 = run_section(artifact, manifest, HWU / "test.jsonl")
    fp32 = run_section(*fp32_model(artifact, manifest), HWU / "test.jsonl")
    slurp = run_section(artifact, manifest, unseen_slurp(out))
    doc = {"hwu64_test_int8": int8, "hwu64_test_fp32": fp32, "slurp_dev_unseen_int8": slurp}
    report.write_report({**doc, "test": int8}, out / "hwu64-test.json", out / "hwu64-test.png")
    dev = manifest.metrics["dev"]
    return {
        "int8_accuracy": int8["headline"]["intent_accuracy"],
        "fp32_accuracy": fp32["headline"]["intent_accuracy"],
        "int8_macro_f1": int8["headline"]["intent_macro_f1"],
        "entity_f1": int8["headline"]["entity_f1"],
        "entity_p": int8["headline"]["entity_precision"],
        "entity_r": int8["headline"]["entity_recall"],
        "entity_f1_word_glue": word_glue_f1(artifact, manifest, HWU / "test.jsonl"),
        "dev_accuracy": dev["intent_accuracy"],
        "temperature": manifest.temperature,
        "threshold": manifest.thresholds.escalate,
        "dev_escalated": dev["escalated"],
        "escalated": int8["selective"]["escalated"],
        "kept_accuracy": int8["selective"]["kept_accuracy"],
        "unfamiliar": int8["selective"]["unfamiliar"],
        "softmax_only": softmax_only(artifact, manifest, HWU / "test.jsonl"),
        "ece": int8["headline"]["ece"],
        "ece_uncalibrated": int8["headline"]["ece_uncalibrated"],
        "slurp_accuracy": slurp["headline"]["intent_accuracy"],
        "slurp_examples": slurp["headline"]["examples"],
        "slurp_known_intent_accuracy": known_accuracy(slurp, manifest.labels),
        "latency_p50_ms": int8["headline"]["latency_ms_p50"],
        "latency_p99_ms": int8["headline"]["latency_ms_p99"],
        "model_mb": round((artifact / "model.onnx").stat().st_size / 1e6, 1),
        "wall_minutes": round(wall / 60, 1),
        "curve": curve_points(int8),
    }


def run_section(folder: Path, manifest: mf.Manifest, data: Path) -> dict[str, Any]:
    """The file as the device answers it: the manifest's temperature, threshold and distance limit."""
    runtime = serving.open_runtime(folder, manifest)
    outputs = evaluate.infer(runtime, manifest, data)
    return report.section(
        outputs, manifest.labels, manifest.temperature, manifest.thresholds.escalate, manifest.max_distance
    )


def softmax_only(folder: Path, manifest: mf.Manifest, data: Path) -> dict[str, float]:
    """For comparison: the softmax rule alone, its threshold picked on dev as before the distance score."""
    chosen = next(r for r in manifest.ood.dev["candidates"] if r["rule"] == "softmax") if manifest.ood else None
    threshold = chosen["threshold"] if chosen else manifest.thresholds.escalate
    outputs = evaluate.infer(serving.open_runtime(folder, manifest), manifest, data)
    return report.section(outputs, manifest.labels, manifest.temperature, threshold)["selective"]  # type: ignore[no-any-return]


def word_glue_f1(folder: Path, manifest: mf.Manifest, data: Path) -> float:
    """Diagnostic, not what the device serves: entity F1 if a span absorbed only word pieces of the same
    word (tokenizer word ids) instead of any token with no gap before it, which turns a gold `emma` into
    `emma's`. Same int8 model and tags; only the span decoding differs."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    gold, found = [], []
    for rec in records.read(data):
        enc = tokenizer.encode(rec.text, add_special_tokens=True)
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.ones((1, len(enc.ids)), dtype=np.int64)}
        tag_ids = session.run(["tag_logits"], feeds)[0][0].argmax(-1)
        gold.append([(e.type, e.value) for e in rec.entities])
        found.append(_word_spans(rec.text, [manifest.tags[i] for i in tag_ids], enc.offsets, enc.word_ids))
    return float(metrics.entities(gold, found)["f1"])


def _word_spans(text: str, tags: list[str], offsets: list[tuple[int, int]], words: list[int | None]) -> list[Any]:
    spans, kind, start, end, previous = [], None, 0, 0, None
    for tag, (lo, hi), word in zip(tags, offsets, words, strict=True):
        prefix, _, name = tag.partition("-")
        glued = kind is not None and word is not None and word == previous and prefix != "B"
        previous = word
        if hi > lo and (glued or (prefix == "I" and kind == name)):
            end = hi
            continue
        if kind is not None:
            spans.append((kind, text[start:end]))
        kind = name if hi > lo and prefix in ("B", "I") else None
        start, end = lo, hi
    if kind is not None:
        spans.append((kind, text[start:end]))
    return spans


def fp32_model(artifact: Path, manifest: mf.Manifest) -> tuple[Path, mf.Manifest]:
    """The same artifact with the fp32 ONNX from the export stage in place of the int8 model."""
    export_dir = stage.work_dir(manifest.name, artifact) / "export"
    if manifest.ood is not None:  # the same distance table (fitted on the int8 embeddings)
        shutil.copy(artifact / manifest.ood.file, export_dir / manifest.ood.file)
    files = [
        mf.file_entry(export_dir, "model.fp32.onnx", "model"),
        mf.file_entry(export_dir, "tokenizer.json", "tokenizer"),
        *([mf.file_entry(export_dir, manifest.ood.file, "ood")] if manifest.ood else []),
    ]
    return export_dir, manifest.model_copy(update={"files": files})


def unseen_slurp(out: Path) -> Path:
    """SLURP dev without the texts hwu64 train/dev already contain; entities dropped (offsets differ)."""
    path = out / "slurp-dev-unseen.jsonl"
    with SLURP_DEV.open() as src, path.open("w") as dst:
        for line in src:
            rec = json.loads(line)
            if not rec["seen_in_hwu64_train_or_dev"]:
                dst.write(json.dumps({"text": rec["text"], "intent": rec["intent"]}) + "\n")
    return path


def known_accuracy(section: dict[str, Any], labels: list[str]) -> float:
    """Accuracy on the records whose intent exists in hwu64 (SLURP has 4 intents hwu64 lacks)."""
    table = section["intent"]["per_label"]
    known = [row for label, row in table.items() if label in labels]
    hits = sum(row["recall"] * row["support"] for row in known)
    return float(round(hits / max(1, sum(row["support"] for row in known)), 4))


def curve_points(section: dict[str, Any]) -> list[tuple[float, float]]:
    curve = section["calibration"]["risk_coverage"]
    return [(p["coverage"], p["accuracy"]) for p in curve if round(p["coverage"] * 100) % 5 == 0]


def measure_unknown(out: Path, recipe: EncoderRecipe, reuse: bool | str) -> dict[str, Any]:
    """Train without 8 intents; the trainer chooses the escalation rule on dev without them plus their
    dev records (unseen: never test). Then: how many of their test requests escalate, and the AUROC of
    each score for known-vs-unknown on test."""
    split = {name: _split(out, name) for name in ("train", "dev", "test")}
    artifact, wall = build(
        out, "hwu64-known", split["train"][0], split["dev"][0], recipe, reuse, split["test"][0], split["dev"][1]
    )
    manifest = mf.load(artifact)
    assert manifest.ood is not None
    runtime = serving.open_runtime(artifact, manifest)
    known_out = evaluate.infer(runtime, manifest, split["test"][0])
    unknown_out = evaluate.infer(runtime, manifest, split["test"][1])
    unknown = report.section(
        unknown_out, manifest.labels, manifest.temperature, manifest.thresholds.escalate, manifest.max_distance
    )
    (out / "hwu64-unknown.json").write_text(json.dumps(unknown, indent=2) + "\n")
    chosen = manifest.ood.dev["chosen"]
    softmax_dev = next(r for r in manifest.ood.dev["candidates"] if r["rule"] == "softmax")
    conf_k, conf_u = (calibration.softmax(o.logits, manifest.temperature).max(axis=1) for o in (known_out, unknown_out))
    known = manifest.metrics["test"]
    return {
        "rule": manifest.ood.rule,
        "rule_quantile": chosen["quantile"],
        "rule_dev": chosen,
        "dev_auroc": manifest.ood.dev.get("auroc", {}),
        "unknown_escalated": unknown["selective"]["escalated"],
        "unknown_escalated_softmax": round(float(np.mean(conf_u < softmax_dev["threshold"])), 4),
        "unknown_examples": len(conf_u),
        "known_threshold": manifest.thresholds.escalate,
        "known_test_accuracy": known["intent_accuracy"],
        "known_test_escalated": known["escalated"],
        "known_test_kept": known["kept_accuracy"],
        "auroc": {
            "softmax": ood.auroc(-conf_k, -conf_u),
            "mahalanobis": ood.auroc(_distances(known_out), _distances(unknown_out)),
            "knn_cosine": knn_auroc(runtime, split["train"][0], known_out, unknown_out),
        },
        "known_wall_minutes": round(wall / 60, 1),
    }


def _distances(out: Any) -> np.ndarray:
    assert out.distances is not None, "the model has a distance table"
    d: np.ndarray = out.distances
    return d


def knn_auroc(runtime: Any, train: Path, known: Any, unknown: Any, k: int = 10) -> float:
    """Bench only (not shipped): 1 - mean cosine similarity to the k nearest training embeddings."""

    def unit(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    bank = unit(familiarity.embeddings(runtime, [r.text for r in records.read(train)]))
    scores = []
    for outputs in (known, unknown):
        sims = unit(familiarity.embeddings(runtime, outputs.texts)) @ bank.T
        scores.append(1 - np.sort(sims, axis=1)[:, -k:].mean(axis=1))
    return ood.auroc(scores[0], scores[1])


def _split(out: Path, name: str) -> tuple[Path, Path]:
    """(records of the 56 kept intents, records of the 8 held-out intents) of one HWU64 split."""
    kept, held = out / f"known-{name}.jsonl", out / f"unknown-{name}.jsonl"
    with (HWU / f"{name}.jsonl").open() as src, kept.open("w") as k, held.open("w") as h:
        for line in src:
            (h if json.loads(line)["intent"] in HELD_OUT else k).write(line)
    return kept, held


def print_table(rows: dict[str, Any]) -> None:
    def line(metric: str, value: str, bar: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        print(f"| {metric:<52} | {value:>14} | {bar:>10} | {verdict:<6} |")

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731  (local formatting shorthand)
    print(f"| {'metric':<52} | {'value':>14} | {'bar':>10} | {'':<6} |")
    print(f"|{'-' * 54}|{'-' * 16}|{'-' * 12}|{'-' * 8}|")
    line(
        "HWU64 test intent accuracy, int8",
        pct(rows["int8_accuracy"]),
        ">= 93.0%",
        rows["int8_accuracy"] >= BARS["int8_accuracy"],
    )
    line("HWU64 test intent accuracy, fp32", pct(rows["fp32_accuracy"]))
    gap = rows["fp32_accuracy"] - rows["int8_accuracy"]
    line("int8 minus fp32", f"{-100 * gap:+.1f} pt", "<= 0.5 pt", gap <= BARS["int8_gap"])
    line("HWU64 test intent macro-F1, int8", pct(rows["int8_macro_f1"]))
    line(
        "HWU64 test entity F1 (exact type+value), int8",
        pct(rows["entity_f1"]),
        ">= 80.0%",
        rows["entity_f1"] >= BARS["entity_f1"],
    )
    line("  entity precision / recall", f"{pct(rows['entity_p'])} / {pct(rows['entity_r'])}")
    line("  entity F1 if spans glued word pieces only (diagnostic)", pct(rows["entity_f1_word_glue"]))
    line("SLURP dev, unseen in hwu64, intent accuracy", pct(rows["slurp_accuracy"]), f"n={rows['slurp_examples']}")
    line("  same, only intents hwu64 knows", pct(rows["slurp_known_intent_accuracy"]))
    line(f"threshold (dev, target 98%), T={rows['temperature']:.3f}", f"{rows['threshold']:.4f}")
    if "rule" in rows:
        q = rows["rule_quantile"]
        line("escalation rule (chosen on 56-intent dev + unseen dev)", rows["rule"] + (f" q={q}" if q else ""))
    line(
        "HWU64 test kept accuracy at the rule",
        pct(rows["kept_accuracy"]),
        ">= 98.0%",
        rows["kept_accuracy"] >= BARS["kept_accuracy"],
    )
    line("HWU64 test escalated at the rule", pct(rows["escalated"]), "<= 12.0%", rows["escalated"] <= BARS["escalated"])
    line("  of which by the distance limit", pct(rows["unfamiliar"]))
    so = rows["softmax_only"]
    line("  softmax alone (dev threshold): escalated / kept", f"{pct(so['escalated'])} / {pct(so['kept_accuracy'])}")
    line("ECE test, before / after temperature", f"{rows['ece_uncalibrated']:.3f} / {rows['ece']:.3f}")
    if "unknown_escalated" in rows:
        line(
            f"held-out intents escalated at the rule (n={rows['unknown_examples']})",
            pct(rows["unknown_escalated"]),
            ">= 90.0%",
            rows["unknown_escalated"] >= BARS["unknown_escalated"],
        )
        line("  same, softmax alone", pct(rows["unknown_escalated_softmax"]))
        known = [pct(rows[k]) for k in ("known_test_accuracy", "known_test_escalated", "known_test_kept")]
        line("  56-intent model: test accuracy / escalated / kept", " / ".join(known))
        au = rows["auroc"]
        line("AUROC known vs held-out, test: softmax / Mahalanobis", f"{au['softmax']:.3f} / {au['mahalanobis']:.3f}")
        line("  kNN cosine (k=10, bench only)", f"{au['knn_cosine']:.3f}")
        dev = rows["rule_dev"]
        line(
            "  rule on dev: known escalated / kept / unseen escalated",
            f"{pct(dev['escalated'])} / {pct(dev['kept_accuracy'])} / {pct(dev.get('unseen_escalated', 0))}",
        )
    line(
        "latency p50 / p99 per request (onnxruntime, 2 thr)",
        f"{rows['latency_p50_ms']:.1f} / {rows['latency_p99_ms']:.1f} ms",
    )
    line("int8 model size", f"{rows['model_mb']} MB")
    line(
        "wall time, full HWU64 pipeline",
        f"{rows['wall_minutes']} min",
        "<= 15 min",
        rows["wall_minutes"] <= BARS["wall_minutes"],
    )
    print("\nrisk-coverage on HWU64 test (coverage -> accuracy of kept):")
    print("  " + "  ".join(f"{100 * c:.0f}%:{100 * a:.1f}" for c, a in rows["curve"]))


if __name__ == "__main__":
    raise SystemExit(main())
