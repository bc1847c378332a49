"""The GGUF path on a real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF) fine-tuned on HWU64. By hand:

    python -m bench.gguf              # build both artifacts from the GGUF file (if missing), then measure
    python -m bench.gguf --reuse      # measure the artifacts already under bench/out/gguf/
    python -m bench.gguf --lean       # the quality table, sizes, latency and the agent only (no lever studies)

(As a module, from the repository root: run as a file, bench/gguf.py would shadow the `gguf` package.)

Both artifacts come from `edge-trainer build-causal --base SmolLM2-135M-Instruct.Q4_1.gguf` (its code,
in process): import -> LoRA on CPU -> merge -> GGUF f16 -> Q8_0 / Q4_K_M -> evaluation of every variant
through the agent's runtime (dev: temperature and threshold; test: report) -> artifact. On 2 cores one
epoch of the whole train split (8,881 texts) costs about an hour per task, so each trains on a stated
share of it (the first rows of every intent) for a stated number of steps: the tables say which.

Measured (2 llama.cpp threads unless a row says otherwise, test texts spread over all 64 intents):
1. quality and cost per variant (f16 / Q8_0 / Q4_K_M): intent accuracy, macro-F1, JSON validity, field
   exact match, entity F1 (HWU64 test, from each artifact's evaluation), size, RSS, p50 / p99 latency;
2. zero-shot: the instruct model before fine-tuning, same prompt and label set (the floor), and with
   the 64 labels listed in its instruction;
3. classification through the agent over MQTT (mosquitto on loopback), the latency goal's number;
4. the latency gain of each lever, cumulatively, from how the runtime classified before;
5. label scoring: tree vs full vs generating the label freely (latency, accuracy, calibration);
6. tokens/s through the agent's runtime vs raw llama-cpp-python, and the grammar's overhead.

Prints markdown tables; writes bench/out/gguf/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import smollm2  # noqa: E402
from bench.gguf_data import OUT, rows_of, share, split_file, spread  # noqa: E402
from bench.gguf_generation import grammar_overhead, long_generation, raw_vs_runtime  # noqa: E402
from bench.gguf_tables import tables  # noqa: E402
from bench.mqtt_peer import mosquitto  # noqa: E402
from bench.overhead import rss_mb, start_agent, timed  # noqa: E402
from edge_agent.contract import manifest as mf  # noqa: E402  (after the path tweak, run as a script)
from edge_agent.errors import AgentError  # noqa: E402
from edge_agent.runtimes import llamacpp  # noqa: E402
from edge_agent.runtimes.gguf import GgufRuntime  # noqa: E402
from trainer import calibration  # noqa: E402
from trainer.causal import build, data, prompts  # noqa: E402
from trainer.causal.export import build_manifest  # noqa: E402
from trainer.causal.recipe import CausalRecipe  # noqa: E402

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def train(task: str, args: argparse.Namespace) -> Path:
    classify = task == "classify"
    fraction, steps = (args.share, args.steps) if classify else (args.extract_share, args.extract_steps)
    recipe = CausalRecipe(
        epochs=args.epochs if classify else args.extract_epochs,
        max_steps=steps,
        lr=args.lr,
        threads=args.threads,
        checkpoint_every=100,
        top_layers=args.top_layers,
        qlora=args.qlora,
        precision=args.precision,
    )
    options = build.CausalBuild(
        name=f"smollm2-hwu64-{task}",
        out=OUT / f"smollm2-{task}",
        base=args.base,
        task=task,  # type: ignore[arg-type]
        work=OUT / f".work-{task}",
        test=split_file("test", 0 if classify else args.extract_test_n),
        max_tokens=48,
        threads=args.threads,
    )
    started = time.monotonic()
    dev = split_file("dev", 0 if classify else 300)  # classify calibrates on all of dev
    artifact = build.build(share(fraction), dev, options, recipe)
    print(f"built {artifact} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return artifact


def runtime(folder: Path, threads: int, manifest: mf.Manifest | None = None) -> GgufRuntime:
    return GgufRuntime(folder, manifest or mf.load(folder), threads)


def timings(fn: Any, texts: list[str], warm: int = 3) -> list[float]:
    out = []
    for text in [*texts[:warm], *texts]:
        t0 = time.perf_counter()
        with contextlib.suppress(AgentError):  # an invalid answer costs its time too
            fn(text)
        out.append((time.perf_counter() - t0) * 1000)
    return out[warm:]


def p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def variants(task: str, artifact: Path, texts: list[str], threads: int) -> dict[str, Any]:
    """Per exported variant: the evaluation's test scores, size, p50/p99 ms and RSS of a process serving it."""
    export = OUT / f".work-{task}" / "export"
    spec = data.TaskSpec.load(export)
    files = json.loads((export / "stage.json").read_text())["results"]["files"]
    served = mf.load(artifact)
    table = dict(served.metrics["variants"])
    for name, rel in files.items():
        manifest = build_manifest(export, [(rel, "model")], spec)
        manifest.label_scoring = served.label_scoring
        rt = runtime(export, threads, manifest)
        try:
            ms = timings(lambda t, rt=rt: rt.predict([t]), texts)
        finally:
            rt.close()
        table[name].update(p50_ms=p(ms, 50), p99_ms=p(ms, 99), rss_mb=serving_rss(export, rel, spec, threads))
    return table


def serving_rss(folder: Path, rel: str, spec: data.TaskSpec, threads: int) -> float:
    """Peak RSS of a fresh process that loads this GGUF in the runtime and answers 20 requests."""
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from edge_agent.runtimes.gguf import GgufRuntime;"
        "from trainer.causal import data; from trainer.causal.export import build_manifest;"
        "f=Path(sys.argv[2]); s=data.TaskSpec.load(f); rt=GgufRuntime(f, build_manifest(f,[(sys.argv[3],'model')],s),"
        "int(sys.argv[4]));"
        "[rt.predict([t]) for t in json.loads(sys.argv[5])];"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )  # VmHWM, not ru_maxrss: that one keeps the forking parent's high-water mark across exec
    texts = json.dumps([r["text"] for r in spread(rows_of("dev"), 20)])
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(folder), rel, str(threads), texts],
        capture_output=True,
        text=True,
        check=True,
    )
    return round(int(out.stdout.split()[-1]) / 1024, 1)


def accuracy(rt: GgufRuntime, rows: list[dict[str, Any]]) -> float:
    right = 0
    for row in rows:
        with contextlib.suppress(AgentError):
            right += rt.predict([row["text"]])[0].label == row["intent"]
    return round(right / len(rows), 4)


def zero_shot(classify: Path, threads: int, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The instruct model as shipped (the Q4_1 file), the fine-tune's prompt and labels, tree scoring;
    then with every label named in its instruction (the prompt a zero-shot user would write)."""
    folder = OUT / "zero-shot"
    folder.mkdir(exist_ok=True)
    link = folder / "base.gguf"
    if not link.exists():
        link.symlink_to(smollm2.gguf())
    served = mf.load(classify)
    assert served.prompt is not None
    base = served.model_copy(update={"files": [mf.file_entry(folder, "base.gguf", "model")], "temperature": 1.0})
    instruction = prompts.INSTRUCTIONS["classify"]
    listed = f"{instruction} Labels: {', '.join(served.labels)}."
    named = base.model_copy(
        update={
            "prompt": served.prompt.model_copy(update={"template": served.prompt.template.replace(instruction, listed)})
        }
    )
    out = {}
    for key, manifest in (("zero_shot", base), ("zero_shot_labels_listed", named)):
        rt = runtime(folder, threads, manifest)
        try:
            out[key] = accuracy(rt, rows)
        finally:
            rt.close()
    return out


def through_agent(artifact: Path, texts: list[str], threads: int) -> dict[str, float]:
    """Sequential requests over MQTT 5 to a running agent serving the classifier: round trip, and the
    agent's RSS after them."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models.yaml"
        models.write_text(yaml.safe_dump({"models": [{"name": "intent", "path": str(artifact), "threads": threads}]}))
        with mosquitto(tmp) as port:
            proc, _ = start_agent(models, port, tmp, threads)
            try:
                replies = timed(port, "edge-agent/bench/req/intent", [*texts[:5], *texts])[5:]
                _, hwm = rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(20)
    ms = [t for t, _ in replies]
    errors = sum("error" in r for _, r in replies)
    return {"p50_ms": p(ms, 50), "p99_ms": p(ms, 99), "errors": errors, "n": len(ms), "rss_mb": round(hwm, 1)}


def lever_manifests(artifact: Path) -> list[tuple[str, mf.Manifest, bool]]:
    """(what changed, manifest, prefix kept in the KV cache), cumulatively from how it ran before."""
    now = mf.load(artifact)
    assert now.prompt is not None
    instruction = prompts.INSTRUCTIONS["classify"]
    old_template = now.prompt.template.replace(instruction, DEFAULT_SYSTEM).replace(
        "user\n{text}", f"user\n{instruction}\n{{text}}"
    )
    old_prompt = now.prompt.model_copy(update={"template": old_template})
    before = now.model_copy(update={"prompt": old_prompt, "label_scoring": "full"})
    return [
        (
            "before: default system prompt + instruction in the user turn, whole prompt evaluated, full scoring",
            before,
            False,
        ),
        ("+ the template's fixed prefix kept in the KV cache", before, True),
        (
            "+ the instruction as the system turn (33 prompt tokens, not 55)",
            now.model_copy(update={"label_scoring": "full"}),
            True,
        ),
        ("+ the label tree: logits only where it branches (the default)", now, True),
    ]


def levers(artifact: Path, texts: list[str], threads: int) -> list[dict[str, Any]]:
    out = []
    for what, manifest, cached in lever_manifests(artifact):
        rt = runtime(artifact, threads, manifest)
        try:

            def one(text: str, rt: GgufRuntime = rt, cached: bool = cached) -> None:
                if not cached:
                    rt.llm.cached = []  # nothing reusable: the whole prompt is evaluated again
                rt.predict([text])

            ms = timings(one, texts)
        finally:
            rt.close()
        out.append({"lever": what, "p50_ms": p(ms, 50), "p99_ms": p(ms, 99)})
    for what, n_threads, ubatch in (
        ("1 thread instead of 2", 1, None),
        ("n_ubatch 16", threads, 16),
        ("n_ubatch 64", threads, 64),
    ):
        llamacpp.UBATCH = ubatch
        rt = runtime(artifact, n_threads)
        try:
            ms = timings(lambda t, rt=rt: rt.predict([t]), texts)
        finally:
            rt.close()
            llamacpp.UBATCH = None
        out.append({"lever": f"(the default, but {what})", "p50_ms": p(ms, 50), "p99_ms": p(ms, 99)})
    return out


def scoring_methods(
    artifact: Path, threads: int, dev: list[dict[str, Any]], test: list[dict[str, Any]]
) -> dict[str, Any]:
    """Tree vs full label scoring (each with its own temperature fitted on dev) vs free generation."""
    served = mf.load(artifact)
    labels = served.labels
    out: dict[str, Any] = {}
    for method in ("tree", "full"):
        rt = runtime(artifact, threads, served.model_copy(update={"label_scoring": method, "temperature": 1.0}))
        try:
            fit = np.array([rt.scores(r["text"]) for r in dev])
            gold_dev = np.array([labels.index(r["intent"]) for r in dev])
            temperature = calibration.fit_temperature(fit, gold_dev)
            ms, scores = [], []
            for row in test:
                t0 = time.perf_counter()
                scores.append(rt.scores(row["text"]))
                ms.append((time.perf_counter() - t0) * 1000)
        finally:
            rt.close()
        probs = calibration.softmax(np.array(scores), temperature)
        correct = np.array([labels[i] == r["intent"] for i, r in zip(probs.argmax(1), test, strict=True)], dtype=float)
        out[method] = {
            "p50_ms": p(ms, 50),
            "p99_ms": p(ms, 99),
            "accuracy": round(float(correct.mean()), 4),
            "ece": round(calibration.ece(probs.max(1), correct), 4),
            "temperature": round(temperature, 3),
        }
    rt = runtime(artifact, threads)
    try:
        ms, right, outside = [], 0, 0
        for row in test:
            t0 = time.perf_counter()
            said = rt.complete(row["text"], constrained=False).text
            ms.append((time.perf_counter() - t0) * 1000)
            right += said == row["intent"]
            outside += said not in labels
    finally:
        rt.close()
    out["generation"] = {
        "p50_ms": p(ms, 50),
        "p99_ms": p(ms, 99),
        "accuracy": round(right / len(test), 4),
        "outside_label_set": round(outside / len(test), 4),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="measure existing artifacts, train nothing")
    parser.add_argument("--base", type=Path, help="the GGUF file (default: SmolLM2-135M-Instruct Q4_1, fetched once)")
    parser.add_argument("--share", type=float, default=1.0, help="classify: share of each intent's train rows")
    parser.add_argument("--steps", type=int, default=0, help="classify: optimizer steps (batch 16; 0: --epochs)")
    parser.add_argument("--epochs", type=int, default=2, help="classify: epochs over the share (default 2)")
    parser.add_argument("--extract-share", type=float, default=0.4)
    parser.add_argument("--extract-steps", type=int, default=0)
    parser.add_argument("--extract-epochs", type=int, default=1)
    parser.add_argument("--extract-test-n", type=int, default=0, help="extract: test texts (0: all 1,076)")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--top-layers", type=int, default=10, help="LoRA on the top N of 30 layers (0: all)")
    parser.add_argument("--qlora", default="auto", help="auto (LoRA on a CPU, QLoRA on a GPU), on or off")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on a GPU that has it), no, bf16")
    parser.add_argument("--lean", action="store_true", help="quality, size, latency and the agent only")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (default 2)")
    parser.add_argument("-n", type=int, default=300, help="test texts per timing")
    args = parser.parse_args()
    started = time.monotonic()
    args.base = args.base or smollm2.gguf()
    OUT.mkdir(parents=True, exist_ok=True)
    artifacts = {task: OUT / f"smollm2-{task}" for task in ("classify", "extract")}
    for task, folder in artifacts.items():
        if not (folder / mf.MANIFEST).is_file():
            if args.reuse:
                raise SystemExit(f"{folder}: no artifact; run without --reuse first")
            train(task, args)
    results = measure(artifacts, args)
    results["wall_minutes"] = round((time.monotonic() - started) / 60, 1)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    tables(results)


def training(task: str) -> str:
    """What the fine-tune saw: steps, batch, rate, and how many train texts."""
    work = OUT / f".work-{task}"
    recipe = json.loads((work / "finetune" / "stage.json").read_text())["params"]["recipe"]
    texts = sum(1 for _ in (work / "data" / "train.jsonl").open())
    seen = min(texts * recipe["epochs"], recipe["max_steps"] * recipe["batch_size"]) if recipe["max_steps"] else texts
    seen = seen if recipe["max_steps"] else texts * recipe["epochs"]
    meta = json.loads((work / "finetune" / "stage.json").read_text())
    how = f"{meta['params'].get('mode', 'lora')} on the top {recipe.get('top_layers') or 'all'} layers"
    return (
        f"{texts} train texts (share of HWU64 train), {recipe['max_steps'] or recipe['epochs']} "
        f"{'steps' if recipe['max_steps'] else 'epochs'} of {recipe['batch_size']} ({seen} examples seen), "
        f"lr {recipe['lr']}, {how}, LoRA r {recipe['lora_r']}, {meta['results']['seconds'] / 60:.0f} min"
    )


def measure(artifacts: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    test, dev = rows_of("test"), rows_of("dev")
    rows, dev_rows = spread(test, args.n), spread(dev, args.n)
    texts = [row["text"] for row in rows]
    results: dict[str, Any] = {"threads": args.threads, "n": len(rows), "n_dev": len(dev_rows)}
    results["training"] = {task: training(task) for task in artifacts}
    results["variants"] = {task: variants(task, a, texts[:100], args.threads) for task, a in artifacts.items()}
    results["through_agent"] = through_agent(artifacts["classify"], texts, args.threads)
    if args.lean:
        results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return results
    results["zero_shot"] = zero_shot(artifacts["classify"], args.threads, test)
    results["levers"] = levers(artifacts["classify"], texts[:100], args.threads)
    results["scoring"] = scoring_methods(artifacts["classify"], args.threads, dev_rows, rows)
    extract = runtime(artifacts["extract"], args.threads)
    try:
        results["grammar_overhead"] = grammar_overhead(extract, texts[:100])
        results["raw_vs_runtime_short"] = raw_vs_runtime(
            extract, artifacts["extract"] / "model.gguf", texts[:50], args.threads, 64
        )
    finally:
        extract.close()
    results["raw_vs_runtime_long"] = long_generation(artifacts["extract"], OUT, args.threads, texts[:20])
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


if __name__ == "__main__":
    main()
