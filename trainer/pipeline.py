"""`build`: every stage in order, each into its own folder under a work dir, the artifact last.

data -> finetune -> export -> evaluate (dev: calibrate; test: report) -> publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import data, evaluate, export, finetune, publish, stage
from trainer.recipe import Recipe

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass
class BuildOptions:
    """What `build` needs beyond the data: where things go and how the model is made."""

    name: str
    out: Path
    base: Path | None = None
    work: Path | None = None
    test: Path | None = None
    max_tokens: int = 64
    target_accuracy: float = evaluate.DEFAULT_TARGET
    version: str | None = None
    key: Ed25519PrivateKey | None = None
    registry: Path | None = None


def build(train: Path, dev: Path, options: BuildOptions, recipe: Recipe | None = None) -> Path:
    """Run every stage; returns the published artifact folder."""
    publish.check_identity(options.name, options.version)
    work = stage.work_dir(options.name, options.out, options.work)
    data_dir = data.run(train, dev, work / "data", options.base, options.max_tokens)
    model_dir = finetune.run(data_dir, work / "finetune", options.base, recipe)
    export_dir = export.run(model_dir, data_dir, work / "export")
    eval_dir = evaluate.run(export_dir, dev, work / "evaluate", options.test, options.target_accuracy)
    return publish.run(export_dir, options.out, options.name, eval_dir, options.version, options.key, options.registry)
