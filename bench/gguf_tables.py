"""bench/gguf.py's results as markdown tables (what bench/README.md quotes)."""

from __future__ import annotations

from typing import Any


def tables(r: dict[str, Any]) -> None:
    """The results as markdown."""
    print(f"\n## HWU64 test (1,076 texts, 64 intents), through the agent's runtime, {r['threads']} threads\n")
    for task, how in r["training"].items():
        print(f"- {task}: {how}")
    cols = ("task", "variant", "MB", "RSS MB", "intent acc.", "macro-F1", "JSON valid", "field EM", "entity F1")
    print("\n| " + " | ".join((*cols, "p50 ms", "p99 ms")) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, table in r["variants"].items():
        for name, v in table.items():
            t = v["test"]
            cells = [f"{100 * t[k]:.1f}" if k in t else "-" for k in ("json_valid", "field_exact", "entity_f1")]
            print(
                f"| {task} | {name} | {v['size_bytes'] / 1e6:.0f} | {v['rss_mb']} | {100 * t['intent_accuracy']:.1f} "
                f"| {100 * t['intent_macro_f1']:.1f} | {' | '.join(cells)} | {v['p50_ms']} | {v['p99_ms']} |"
            )
    if "zero_shot" not in r:  # --lean
        a = r["through_agent"]
        print(
            f"\nThrough the agent over MQTT (Q8_0, sequential, n = {a['n']}): "
            f"p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, "
            f"{a['errors']} errors, agent peak RSS {a['rss_mb']} MB. Wall time of the bench: {r['wall_minutes']} min."
        )
        return
    z = r["zero_shot"]
    print(
        f"\nZero-shot (the instruct model as shipped, Q4_1, before fine-tuning): {100 * z['zero_shot']:.1f} % "
        f"with the fine-tune's prompt; {100 * z['zero_shot_labels_listed']:.1f} % with the 64 labels in its "
        "instruction."
    )
    a = r["through_agent"]
    print(f"\n## classification through the agent over MQTT (Q8_0, sequential, n = {a['n']})\n")
    print("| p50 ms | p99 ms | errors | agent peak RSS MB | goal |")
    print("|---:|---:|---:|---:|---|")
    print(f"| {a['p50_ms']} | {a['p99_ms']} | {a['errors']} | {a['rss_mb']} | p50 <= 100 ms (goal 60) |")
    print(f"\n## latency levers, in-process, Q8_0 (n = {r['n']})\n")
    print("| lever | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for row in r["levers"]:
        print(f"| {row['lever']} | {row['p50_ms']} | {row['p99_ms']} |")
    s = r["scoring"]
    print(
        f"\n## label scoring vs generation (Q8_0; temperature fitted on {r['n_dev']} dev texts, {r['n']} test texts)\n"
    )
    print("| method | p50 ms | p99 ms | accuracy | ECE | note |")
    print("|---|---:|---:|---:|---:|---|")
    for method in ("tree", "full"):
        m = s[method]
        print(
            f"| {method} scoring | {m['p50_ms']} | {m['p99_ms']} | {100 * m['accuracy']:.1f} | {m['ece']:.3f} "
            f"| T = {m['temperature']} |"
        )
    g = s["generation"]
    print(
        f"| free generation | {g['p50_ms']} | {g['p99_ms']} | {100 * g['accuracy']:.1f} | - "
        f"| outside the label set {100 * g['outside_label_set']:.1f} % |"
    )
    go, short, long = r["grammar_overhead"], r["raw_vs_runtime_short"], r["raw_vs_runtime_long"]
    print("\n## generation\n")
    print("| measure | agent runtime | comparison | ratio / overhead | goal |")
    print("|---|---:|---:|---:|---|")
    for label, m in (("short, fine-tuned extractor", short), ("128-token answers, instruct model", long)):
        print(f"| tokens/s, {label} | {m['runtime_tok_s']} | raw {m['raw_tok_s']} | {m['ratio']} | >= 0.95 |")
    print(
        f"| ms/token, constrained vs free extraction | {go['constrained_ms_per_token']} | {go['free_ms_per_token']} "
        f"| {100 * go['overhead']:+.1f} % | <= 15 % |"
    )
