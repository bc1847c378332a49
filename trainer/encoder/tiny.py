"""A real artifact in seconds, for tests: a tiny randomly initialised BERT through the real stages.

Same code path as `edge-trainer build` (data -> finetune -> export -> evaluate -> publish); only the
base (hidden 32, 2 layers, MiniLM tokenizer) and the step count are small. The training data, unless
given, is the built-in `trainer.records.builtin_records`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from trainer import records
from trainer.encoder import base as encoder_base
from trainer.encoder import build
from trainer.encoder.recipe import EncoderRecipe


def build_tiny_artifact(
    out: Path, train: Path | None = None, name: str = "tiny", steps: int = 30, version: str | None = None
) -> Path:
    """Build a tiny but complete, verified artifact into `out` and return it (dev = train)."""
    recipe = EncoderRecipe(
        epochs=1000,
        batch_size=8,
        lr=3e-3,
        head_lr=3e-3,
        layer_decay=1.0,
        warmup=0.0,
        label_smoothing=0.0,
        dropout=0.0,
        max_steps=steps,
    )
    with tempfile.TemporaryDirectory(prefix=f"tiny-{name}-") as tmp:
        work = Path(tmp)
        data = train or records.write_builtin(work / "train.jsonl")
        base = encoder_base.make_tiny(work / "base")
        options = build.EncoderBuild(
            name=name, out=out, base=base, work=work / "stages", max_tokens=32, version=version
        )
        return build.build(data, data, options, recipe)
