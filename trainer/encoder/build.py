"""`build`: every encoder stage in order, each into its own folder under a work dir, the artifact last.

data -> finetune -> export -> evaluate (dev: calibrate; test: report) -> publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer import artifact, engine, stage
from trainer.encoder import data, evaluate, export, finetune, publish
from trainer.encoder.recipe import EncoderRecipe


@dataclass(kw_only=True)
class EncoderBuild(artifact.Build):
    """What `build` needs beyond the data: the shared options, and the encoder (default: the bundled one)."""

    base: Path | None = None
    unseen: Path | None = None  # intents held out of training, to choose the escalation rule (never test)
    rule: tuple[str, float | None] | None = None  # the rule (and `either`'s distance quantile), chosen already


def build(train: Path, dev: Path, options: EncoderBuild, recipe: EncoderRecipe | None = None) -> Path:
    """Run every stage; returns the published artifact folder."""
    artifact.check_identity(options.name, options.version)
    if options.unseen is not None:
        data.check_unseen(train, options.unseen)
    work = stage.work_dir(options.name, options.out, options.work)
    if engine.is_main_process():  # under `accelerate launch` / torchrun: the main process prepares the data
        data.run(train, dev, work / "data", options.base, options.max_tokens)
    engine.barrier()
    model_dir = finetune.run(work / "data", work / "finetune", options.base, recipe)  # every process
    if not engine.is_main_process():
        return options.out  # exporting, evaluating and publishing are the main process's
    data_dir = work / "data"
    export_dir = export.run(model_dir, data_dir, work / "export")
    eval_dir = evaluate.run(
        export_dir, dev, work / "evaluate", options.test, options.target_accuracy, train, options.unseen, options.rule
    )
    return publish.run(export_dir, options.out, options.name, eval_dir, options.version, options.key, options.registry)
