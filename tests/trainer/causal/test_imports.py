"""GGUF evaluation runs without the encoder path's stack: no torch, onnxruntime or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "onnxruntime", "transformers")


def test_gguf_evaluation_imports_neither_torch_nor_onnxruntime() -> None:
    code = f"import json, sys, trainer.causal.evaluate; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(done.stdout) == []
