"""The model as a device serves it: evaluation goes through the agent's own ONNX runtime, so the
numbers describe exactly what the fleet runs (tokenizer settings, length limit, BIO decoding).
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.contract import manifest as mf
from edge_agent.runtimes.onnx import OnnxRuntime
from trainer import stage
from trainer.encoder import base as encoder_base
from trainer.encoder import export
from trainer.encoder.data import Labels


def describe(folder: Path) -> mf.Manifest:
    """A published artifact's verified manifest, or a provisional one for an `export` stage folder."""
    if (folder / mf.MANIFEST).is_file():
        return mf.load(folder)
    meta = stage.read(folder, "export")
    files = [(export.MODEL, "model"), (encoder_base.TOKENIZER, "tokenizer")]
    return export.build_manifest(folder, "candidate", "0", files, Labels.load(folder), meta, {})


def open_runtime(folder: Path, manifest: mf.Manifest, threads: int = 2) -> OnnxRuntime:
    return OnnxRuntime(folder, manifest, threads)
