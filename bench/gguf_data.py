"""The HWU64 files bench/gguf.py trains and measures on: a share of train, and dev or test, whole or spread."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HWU = ROOT.parent / "shared" / "datasets" / "hwu64"
OUT = ROOT / "bench" / "out" / "gguf"


def rows_of(split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (HWU / f"{split}.jsonl").read_text().splitlines()]


def spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n rows spread over a file sorted by intent."""
    return rows[:: max(1, len(rows) // n)][:n]


def _written(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def share(fraction: float) -> Path:
    """The first ceil(fraction x n) train rows of every intent (the file is sorted by intent)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows_of("train"):
        by[row["intent"]].append(row)
    kept = [r for label in sorted(by) for r in by[label][: math.ceil(fraction * len(by[label]))]]
    return _written(OUT / f"train-{round(100 * fraction)}.jsonl", kept)


def split_file(split: str, n: int = 0) -> Path:
    """All of `split` (n = 0), or n of its texts spread over the intents: generating costs ~0.2 s a text and
    every variant is evaluated, so extraction is scored on a stated subset."""
    if not n:
        return HWU / f"{split}.jsonl"
    return _written(OUT / f"{split}-{n}.jsonl", spread(rows_of(split), n))
