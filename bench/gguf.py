"""The GGUF path on HWU64, measured the way the device serves it. Run by hand:

    python bench/gguf.py              # train both models (if missing), then measure
    python bench/gguf.py --reuse      # measure the artifacts already under bench/out/gguf/

No pretrained causal LM is reachable here, so the base is a small Llama made from a config (random
weights) with a SentencePiece tokenizer trained on HWU64 train; `build-causal`'s own code then LoRA
fine-tunes it (embeddings and LM head trained in full), merges, converts, quantizes, evaluates every
variant on dev (calibration) and test (report). Two artifacts: `classify` (intent, label scoring) and
`extract` (intent + entities as JSON fields, grammar-constrained). Measured:

1. tokens/s through the agent's runtime vs raw llama-cpp-python (`Llama.create_completion`), same GGUF,
   same prompt ids, greedy; long generations on the untrained base, short ones on the trained extractor;
2. grammar-constrained extraction vs free generation (ms per generated token);
3. label scoring vs generating the label (latency, and how often generation leaves the label set);
4. f16 vs Q8_0 vs Q4_K_M: size, latency, quality on HWU64 test (from each artifact's manifest).

Prints markdown tables; writes bench/out/gguf/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402

from edge_agent import manifest as mf  # noqa: E402  (after the path tweak, run as a script)
from edge_agent.errors import AgentError  # noqa: E402
from edge_agent.runtimes.gguf import GgufRuntime  # noqa: E402
from trainer.causal import build, converter, data, gguf_export, tiny  # noqa: E402
from trainer.causal.publish import build_manifest  # noqa: E402
from trainer.causal.recipe import CausalRecipe  # noqa: E402

HWU = Path("/work/shared/datasets/hwu64")
OUT = ROOT / "bench" / "out" / "gguf"
SIZES = {"hidden": 256, "layers": 4, "vocab_size": 2000}


def corpus() -> list[str]:
    rows = [json.loads(line) for line in (HWU / "train.jsonl").read_text().splitlines()]
    answers = [json.dumps({"intent": r["intent"], **{e["type"]: e["value"] for e in r["entities"]}}) for r in rows]
    return [r["text"] for r in rows] + answers


def base() -> Path:
    folder = OUT / "base"
    if not (folder / "model.safetensors").is_file():
        tiny.make_base(folder, corpus(), "llama", SIZES["hidden"], SIZES["layers"], SIZES["vocab_size"])
    return folder


def train(task: str, args: argparse.Namespace) -> Path:
    recipe = CausalRecipe(
        epochs=args.epochs,
        batch_size=32,
        lr=args.lr,
        lora_r=32,
        lora_alpha=64,
        lora_dropout=0.0,
        train_embeddings=True,
        threads=args.threads,
        checkpoint_every=100,
    )
    options = build.CausalBuild(
        name=f"hwu64-{task}",
        out=OUT / f"hwu64-{task}",
        base=base(),
        task=task,  # type: ignore[arg-type]
        work=OUT / f".work-{task}",
        test=HWU / "test.jsonl",
        max_tokens=48,
        threads=args.threads,
    )
    started = time.monotonic()
    artifact = build.build(HWU / "train.jsonl", HWU / "dev.jsonl", options, recipe)
    print(f"built {artifact} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return artifact


def test_rows(n: int) -> list[dict[str, Any]]:
    """n test rows spread over the file (it is sorted by intent)."""
    rows = [json.loads(line) for line in (HWU / "test.jsonl").read_text().splitlines()]
    return rows[:: max(1, len(rows) // n)][:n]


def runtime(folder: Path, threads: int) -> GgufRuntime:
    return GgufRuntime(folder, mf.load(folder), threads)


def raw_vs_runtime(rt: GgufRuntime, gguf: Path, samples: list[str], threads: int, tokens: int) -> dict[str, float]:
    """Greedy generation of up to `tokens` tokens, same prompt ids: agent runtime vs llama_cpp.Llama."""
    raw = llama_cpp.Llama(
        str(gguf), n_ctx=rt.llm.n_ctx, n_batch=rt.llm.n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    ours_n = raw_n = 0
    ours_s = raw_s = 0.0
    for text in [*samples[:3], *samples]:
        ids = rt.prompt_ids(text)
        t0 = time.perf_counter()
        done = rt.complete(text, constrained=False, max_tokens=tokens)
        t1 = time.perf_counter()
        out = raw.create_completion(ids, max_tokens=tokens, temperature=0.0, top_k=1)
        t2 = time.perf_counter()
        ours_n, ours_s = ours_n + done.tokens, ours_s + (t1 - t0)
        raw_n, raw_s = raw_n + int(out["usage"]["completion_tokens"]), raw_s + (t2 - t1)  # type: ignore[index]
    raw.close()
    return {
        "runtime_tok_s": round(ours_n / ours_s, 1),
        "raw_tok_s": round(raw_n / raw_s, 1),
        "ratio": round((ours_n / ours_s) / (raw_n / raw_s), 3),
        "tokens_per_request": round(ours_n / (len(samples) + 3), 1),
    }


def grammar_overhead(rt: GgufRuntime, samples: list[str]) -> dict[str, float]:
    """ms per generated token, constrained vs free, on the trained extractor (its answers are JSON either way).

    One pass per mode over the same texts: interleaving would hand the second mode a cached prompt."""
    rows: dict[str, list[float]] = {}
    valid_free = 0
    for mode, constrained in (("constrained", True), ("free", False), ("constrained again", True)):
        seconds, tokens = 0.0, 0
        for text in samples:
            t0 = time.perf_counter()
            done = rt.complete(text, constrained=constrained)
            seconds, tokens = seconds + time.perf_counter() - t0, tokens + done.tokens
            valid_free += (not constrained) and _is_json(done.text)
        rows[mode] = [seconds, tokens]
    per = {mode: 1000 * s / n for mode, (s, n) in rows.items()}
    constrained_ms = min(per["constrained"], per["constrained again"])  # the first pass also warms caches
    return {
        "constrained_ms_per_token": round(constrained_ms, 3),
        "free_ms_per_token": round(per["free"], 3),
        "overhead": round(constrained_ms / per["free"] - 1, 3),
        "constrained_ms_per_request": round(1000 * rows["constrained again"][0] / len(samples), 2),
        "free_ms_per_request": round(1000 * rows["free"][0] / len(samples), 2),
        "free_json_valid": round(valid_free / len(samples), 4),
    }


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def scoring_vs_generation(rt: GgufRuntime, rows: list[dict[str, Any]]) -> dict[str, float]:
    """One pass per method over the same texts (interleaving would hand the second a cached prompt)."""
    timings: dict[str, list[float]] = {"scoring": [], "generation": []}
    right = {"scoring": 0, "generation": 0}
    outside = 0
    for method in ("scoring", "generation"):
        for row in rows:
            t0 = time.perf_counter()
            if method == "scoring":
                said = rt.predict([row["text"]])[0].label
            else:
                said = rt.complete(row["text"], constrained=False).text
                outside += said not in rt.manifest.labels
            timings[method].append((time.perf_counter() - t0) * 1000)
            right[method] += said == row["intent"]
    n = len(rows)
    return {
        "scoring_p50_ms": round(statistics.median(timings["scoring"]), 2),
        "generation_p50_ms": round(statistics.median(timings["generation"]), 2),
        "scoring_mean_ms": round(statistics.fmean(timings["scoring"]), 2),
        "generation_mean_ms": round(statistics.fmean(timings["generation"]), 2),
        "scoring_accuracy": round(right["scoring"] / n, 4),
        "generation_accuracy": round(right["generation"] / n, 4),
        "generation_outside_label_set": round(outside / n, 4),
    }


def untrained_gguf(work: Path) -> Path:
    """The random base as Q8_0: it rarely says EOS, so generations run to max_tokens (decode speed)."""
    target = work / "base.q8_0.gguf"
    if not target.is_file():
        f16 = converter.convert(base(), work / "base.f16.gguf", "f16")
        gguf_export.quantize(f16, target, "q8_0", 2)
    return target


def quant_table(artifact: Path) -> dict[str, Any]:
    return dict(mf.read(artifact).metrics["variants"])


def variant_speed(task: str, samples: list[str], threads: int) -> dict[str, float]:
    """p50 ms per request of every exported variant, through the runtime, same texts, same conditions."""
    export = OUT / f".work-{task}" / "export"
    spec = data.TaskSpec.load(export)
    out = {}
    for name, rel in json.loads((export / "stage.json").read_text())["results"]["files"].items():
        rt = GgufRuntime(export, build_manifest(export, [(rel, "model")], spec), threads)
        timings = []
        try:
            for text in [*samples[:3], *samples]:
                t0 = time.perf_counter()
                with contextlib.suppress(AgentError):  # an invalid answer costs its time too
                    rt.predict([text])
                timings.append((time.perf_counter() - t0) * 1000)
        finally:
            rt.close()
        out[name] = round(statistics.median(timings[3:]), 2)
    return out


SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9}


def scale_gguf() -> Path:
    """A SmolLM2-135M-shaped Llama (random weights, this bench's tokenizer) as Q8_0: how label scoring
    and generation cost compare at a size users serve, where one decoded token is no longer ~free."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = OUT / ".work-classify" / "export" / "scale.q8_0.gguf"
    if target.is_file():
        return target
    folder = OUT / "scale-base"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(base() / name, folder / name)
    vocab = json.loads((base() / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, num_key_value_heads=3, tie_word_embeddings=True, **SMOL)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(folder)
    f16 = converter.convert(folder, OUT / "scale.f16.gguf", "f16")
    return gguf_export.quantize(f16, target, "q8_0", 2)


def scale_check(samples: list[str], threads: int) -> dict[str, float]:
    """p50 ms: prompt pass, generating a label-length answer, label scoring (pruned / every label exact),
    and one decode of n tokens (how much batching saves on this CPU)."""
    from edge_agent.runtimes import gguf

    export = OUT / ".work-classify" / "export"
    gguf_path = scale_gguf()
    rt = GgufRuntime(export, build_manifest(export, [(gguf_path.name, "model")], data.TaskSpec.load(export)), threads)
    k = round(statistics.fmean(len(t) for t in rt.label_ids))

    def p50(fn: Any) -> float:
        timings = []
        for text in [*samples[:2], *samples]:
            t0 = time.perf_counter()
            fn(text)
            timings.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(timings[2:]), 1)

    params = round(llama_cpp.llama_model_n_params(rt.llm.model) / 1e6, 1)
    out = {"parameters_m": params, "label_tokens_mean": k, "tree_nodes": sum(len(v) for v in rt.children.values())}
    try:
        out["prompt_pass_ms"] = p50(lambda t: rt.llm.prefill(rt.prompt_ids(t)))
        out["generate_label_ms"] = p50(lambda t: rt.complete(t, constrained=False, max_tokens=k))
        out["scoring_pruned_ms"] = p50(rt.scores)
        prune, gguf.PRUNE = gguf.PRUNE, 1e9
        try:
            out["scoring_all_exact_ms"] = p50(rt.scores)
        finally:
            gguf.PRUNE = prune
        out.update({f"decode_{n}_tokens_ms": decode_cost(rt, samples[0], n) for n in (1, 16, 64, 128)})
    finally:
        rt.close()
    return out


def decode_cost(rt: GgufRuntime, text: str, n: int) -> float:
    ids, timings = rt.prompt_ids(text), []
    for _ in range(5):
        rt.llm.prefill(ids)
        t0 = time.perf_counter()
        rt.llm.decode([(5 + i % 50, len(ids) + i, [0], i == n - 1) for i in range(n)])
        timings.append((time.perf_counter() - t0) * 1000)
        llama_cpp.llama_memory_seq_rm(rt.llm.memory, 0, len(ids), -1)
    return round(statistics.median(timings), 1)


def tables(r: dict[str, Any]) -> None:
    """The results as markdown."""
    print(f"\n## quality on HWU64 test, through the agent's runtime ({r['threads']} llama.cpp thread)\n")
    print("| task | variant | MB | intent acc. | Δ pt | macro-F1 | JSON valid | field EM | entity F1 | p50 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, variants in r["quantization"].items():
        for name, v in variants.items():
            t = v["test"]
            delta = next(iter(d for k, d in t.items() if k.startswith("delta_vs")))["intent_accuracy"]
            cells = [f"{100 * t[k]:.2f}" if k in t else "-" for k in ("json_valid", "field_exact", "entity_f1")]
            print(
                f"| {task} | {name} | {v['size_bytes'] / 1e6:.1f} | {100 * t['intent_accuracy']:.2f} | {delta:+.2f} "
                f"| {100 * t['intent_macro_f1']:.2f} | {' | '.join(cells)} | {r['variant_p50_ms'][task][name]} |"
            )
    sg, go = r["scoring_vs_generation"], r["grammar_overhead"]
    short, long = r["raw_vs_runtime_short"], r["raw_vs_runtime_long"]
    print(f"\n## serving (Q8_0, n = {r['n']})\n")
    print("| measure | agent runtime | comparison | ratio / overhead | goal |")
    print("|---|---:|---:|---:|---|")
    for label, m in (("short, trained extractor", short), ("128-token, untrained base", long)):
        print(f"| tokens/s, {label} | {m['runtime_tok_s']} | raw {m['raw_tok_s']} | {m['ratio']} | ≥ 0.95 |")
    print(
        f"| ms/token, constrained vs free extraction | {go['constrained_ms_per_token']} | {go['free_ms_per_token']} "
        f"| {100 * go['overhead']:+.1f} % | ≤ 15 % |"
    )
    ratio = sg["scoring_p50_ms"] / sg["generation_p50_ms"]
    print(
        f"| label scoring vs generating the label, p50 ms | {sg['scoring_p50_ms']} | {sg['generation_p50_ms']} "
        f"| {ratio:.2f}x | scoring should win |"
    )
    print(
        f"| accuracy: scoring vs generation | {100 * sg['scoring_accuracy']:.1f} % | "
        f"{100 * sg['generation_accuracy']:.1f} % | "
        f"outside the label set {100 * sg['generation_outside_label_set']:.1f} % | |"
    )
    if "scale" in r:
        print("\n## label scoring at 107 M parameters (SmolLM2-135M shape, random weights, Q8_0)\n")
        print("| measure | p50 ms |")
        print("|---|---:|")
        for key, value in r["scale"].items():
            print(f"| {key} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="measure existing artifacts, train nothing")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (default 1)")
    parser.add_argument("-n", type=int, default=200, help="test texts per timing")
    parser.add_argument("--scale", action="store_true", help="also time scoring vs generation at 107 M parameters")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    artifacts = {task: OUT / f"hwu64-{task}" for task in ("classify", "extract")}
    for task, folder in artifacts.items():
        if not (folder / mf.MANIFEST).is_file():
            if args.reuse:
                raise SystemExit(f"{folder}: no artifact; run without --reuse first")
            train(task, args)
    results = measure(artifacts, args)
    if args.scale:
        results["scale"] = scale_check([row["text"] for row in test_rows(30)], args.threads)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    tables(results)


def measure(artifacts: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    rows = test_rows(args.n)
    samples = [row["text"] for row in rows]
    results: dict[str, Any] = {"threads": args.threads, "n": args.n}
    classify, extract = runtime(artifacts["classify"], args.threads), runtime(artifacts["extract"], args.threads)
    try:
        results["scoring_vs_generation"] = scoring_vs_generation(classify, rows)
        results["grammar_overhead"] = grammar_overhead(extract, samples)
        results["raw_vs_runtime_short"] = raw_vs_runtime(
            extract, artifacts["extract"] / "model.gguf", samples[:50], args.threads, 64
        )
        spec = data.TaskSpec.load(OUT / ".work-extract" / "export")
        long_gguf = untrained_gguf(OUT)
        untrained = GgufRuntime(OUT, build_manifest(OUT, [(long_gguf.name, "model")], spec), args.threads)
        try:
            results["raw_vs_runtime_long"] = raw_vs_runtime(untrained, long_gguf, samples[:20], args.threads, 128)
        finally:
            untrained.close()
    except AgentError as exc:
        raise SystemExit(f"measurement failed: {exc}") from None
    finally:
        classify.close()
        extract.close()
    results["quantization"] = {task: quant_table(folder) for task, folder in artifacts.items()}
    results["variant_p50_ms"] = {task: variant_speed(task, samples[:100], args.threads) for task in artifacts}
    return results


if __name__ == "__main__":
    main()
