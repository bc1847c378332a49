"""Static against dynamic int8 on one export: dev accuracy, batch independence and speed, side by side.

Run by hand:  .venv/bin/python bench/int8.py WORK/export [--dev ../shared/datasets/hwu64/dev.jsonl]

WORK/export is the trainer's export stage folder (edge-trainer build --work WORK): it holds every int8
variant and, in stage.json, each one's dev intent accuracy (static in batches, dynamic one request at a
time, as each may be served) and its largest logit change between alone and batched. This bench adds
speed: texts/s of each variant through onnxruntime, tokenization included, one text at a time and in
batches of 32 padded to the batch's longest text, on `--threads` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def texts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


def speed(model: Path, tokenizer: Tokenizer, batch: list[str], size: int, threads: int) -> float:
    """Texts/s over `batch` in chunks of `size` (best of 2 passes)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the agent runs it
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        for start in range(0, len(batch), size):
            encodings = tokenizer.encode_batch(batch[start : start + size])
            width = max(len(e.ids) for e in encodings)
            ids = np.zeros((len(encodings), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, enc in enumerate(encodings):
                ids[row, : len(enc.ids)], mask[row, : len(enc.ids)] = enc.ids, 1
            sess.run(None, {"input_ids": ids, "attention_mask": mask})
        best = max(best, len(batch) / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="the export stage folder")
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "datasets" / "hwu64" / "dev.jsonl")
    parser.add_argument("-n", type=int, default=1000, help="dev texts timed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = json.loads((args.export / "stage.json").read_text())["results"]
    tokenizer = Tokenizer.from_file(str(args.export / "tokenizer.json"))
    tokenizer.no_padding()
    batch = texts(args.dev, args.n)
    print(
        f"# bench/int8.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()} {os.cpu_count()} cores  "
        f"threads {args.threads}  {args.export}  served: {results['chosen']}"
    )
    print("| variant | kind | MB | dev intent acc. | logit change alone vs batched | texts/s, batch 1 | batch 32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kind in results["kinds"].items():
        path = args.export / ("model.fp32.onnx" if name == "fp32" else f"model.{name}.onnx")
        one, many = (speed(path, tokenizer, batch, size, args.threads) for size in (1, 32))
        print(
            f"| {name} | {kind} | {path.stat().st_size / 1e6:.1f} | {results['dev_intent_acc'][name] * 100:.2f} | "
            f"{results['batch_max_abs_logit_diff'][name]:.2g} | {one:.0f} | {many:.0f} |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
