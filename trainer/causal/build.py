"""`build-causal`: every causal stage in order, each into its own folder under a work dir, the artifact last.

(causal-import, when the base is a GGUF file) -> causal-data -> causal-finetune (LoRA / QLoRA, every process under
`accelerate launch`; the rest on the main process only) -> causal-merge (checked against the trained model)
-> causal-export (GGUF + quantizations)
-> causal-evaluate (every variant, through the agent's runtime) -> causal-publish (one variant served).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer import artifact, engine, stage
from trainer.causal import base as causal_base
from trainer.causal import converter, data, evaluate, export, finetune, merge, publish
from trainer.causal.prompts import CausalTask
from trainer.causal.recipe import CausalRecipe
from trainer.errors import UsageError


@dataclass(kw_only=True)
class CausalBuild(artifact.Build):
    """What `build-causal` needs beyond the data: the shared options, the base, the task, the variants."""

    base: Path
    task: CausalTask = "classify"
    quants: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    serve: str = "q8_0"
    dtype: str = "float16"
    threads: int = 1


def build(train: Path, dev: Path, options: CausalBuild, recipe: CausalRecipe | None = None) -> Path:
    """Run every stage; returns the published artifact folder."""
    artifact.check_identity(options.name, options.version)
    if options.serve not in [*options.quants, export.OUTTYPES.get(options.dtype, "")]:
        raise UsageError(f"--serve {options.serve}: not among the variants built ({', '.join(options.quants)})")
    work = stage.work_dir(options.name, options.out, options.work)
    if engine.is_main_process():  # under `accelerate launch`: the main process prepares, the others wait
        base = causal_base.resolve(options.base, work / "base")  # a GGUF file becomes an HF folder, once
        converter.check_vocab(base)  # seconds now, rather than a failed export after the fine-tune
        data.run(train, dev, work / "data", base, options.task, options.max_tokens)
    engine.barrier()
    tuned = finetune.run(work / "data", work / "finetune", recipe)  # every process: its share of each batch
    if not engine.is_main_process():
        return options.out  # merging, exporting, evaluating and publishing are the main process's
    merged = merge.run(tuned, work / "merged", options.dtype)
    exported = export.run(merged, work / "export", options.quants, options.threads)
    target = options.target_accuracy
    evaluated = evaluate.run(exported, dev, work / "evaluate", options.test, target, options.threads, options.serve)
    return publish.run(
        exported,
        evaluated,
        options.out,
        options.name,
        options.serve,
        options.version,
        options.key,
        options.registry,
    )
