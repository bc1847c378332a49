"""bench/gguf.py's generation measures: tokens/s through the agent's runtime against raw llama-cpp-python,
and what the fields grammar costs per generated token."""

from __future__ import annotations

import json
import time
from pathlib import Path

import llama_cpp

from edge_agent.contract import manifest as mf
from edge_agent.runtimes.gguf import GgufRuntime
from trainer.causal import prompts


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


def long_generation(artifact: Path, out: Path, threads: int, samples: list[str]) -> dict[str, float]:
    """The instruct model as shipped, asked to write: 128-token answers (decode speed, not quality)."""
    served = mf.load(artifact)
    assert served.prompt is not None
    folder = out / "zero-shot"
    write = served.prompt.template.replace(prompts.INSTRUCTIONS["extract"], "Write a long story about the request.")
    manifest = served.model_copy(
        update={
            "files": [mf.file_entry(folder, "base.gguf", "model")],
            "prompt": served.prompt.model_copy(update={"template": write}),
            "max_answer_tokens": 128,
        }
    )
    rt = GgufRuntime(folder, manifest, threads)
    try:
        return raw_vs_runtime(rt, folder / "base.gguf", samples, threads, 128)
    finally:
        rt.close()


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
        "free_json_valid": round(valid_free / len(samples), 4),
    }


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
