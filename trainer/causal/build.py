"""`build-causal`: every causal stage in order, each into its own folder under a work dir, the artifact last.

causal-data -> causal-finetune (LoRA / QLoRA) -> causal-merge -> causal-export (GGUF + quantizations)
-> causal-evaluate (every variant, through the agent's runtime) -> causal-publish (one variant served).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import evaluate, publish, stage
from trainer.causal import converter, data, finetune, gguf_export, merge
from trainer.causal import evaluate as causal_eval
from trainer.causal import publish as causal_publish
from trainer.causal.prompts import CausalTask
from trainer.causal.recipe import CausalRecipe
from trainer.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass
class CausalBuild:
    """What `build-causal` needs beyond the data: the base, the task, where things go."""

    name: str
    out: Path
    base: Path
    task: CausalTask = "classify"
    quants: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    serve: str = "q8_0"
    dtype: str = "float16"
    work: Path | None = None
    test: Path | None = None
    max_tokens: int = 64
    target_accuracy: float = evaluate.DEFAULT_TARGET
    version: str | None = None
    key: Ed25519PrivateKey | None = None
    registry: Path | None = None
    threads: int = 1


def build(train: Path, dev: Path, options: CausalBuild, recipe: CausalRecipe | None = None) -> Path:
    """Run every stage; returns the published artifact folder."""
    publish.check_identity(options.name, options.version)
    if options.serve not in [*options.quants, gguf_export.OUTTYPES.get(options.dtype, "")]:
        raise UsageError(f"--serve {options.serve}: not among the variants built ({', '.join(options.quants)})")
    work = stage.work_dir(options.name, options.out, options.work)
    converter.check_vocab(options.base)  # seconds now, rather than a failed export after the fine-tune
    data_dir = data.run(train, dev, work / "data", options.base, options.task, options.max_tokens)
    tuned = finetune.run(data_dir, work / "finetune", recipe)
    merged = merge.run(tuned, work / "merged", options.dtype)
    exported = gguf_export.run(merged, work / "export", options.quants, options.threads)
    target = options.target_accuracy
    evaluated = causal_eval.run(exported, dev, work / "evaluate", options.test, target, options.threads, options.serve)
    return causal_publish.run(
        exported,
        evaluated,
        options.out,
        options.name,
        options.serve,
        options.version,
        options.key,
        options.registry,
    )
