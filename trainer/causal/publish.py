"""Stage `causal-publish`: one GGUF variant, its evaluation and the manifest the agent serves it by.

The manifest carries the prompt contract (template, stops, EOS, BOS, control tokens), the labels
or the fields schema, temperature and threshold fitted on dev, and the measured numbers of every
variant (reference f16/f32, Q8_0, Q4_K_M) with each file's real tensor-type mix, so the cost of
quantization is on record where the model is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import artifact, stage
from trainer.causal.data import TaskSpec
from trainer.causal.export import build_manifest
from trainer.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MODEL = "model.gguf"


def run(
    export_dir: Path,
    eval_dir: Path,
    out: Path,
    name: str,
    variant: str = "q8_0",
    version: str | None = None,
    key: Ed25519PrivateKey | None = None,
    registry_dir: Path | None = None,
) -> Path:
    """Copy the chosen variant as model.gguf plus the reports, write manifest.json (and .sig)."""
    artifact.check_identity(name, version)
    exported = stage.read(export_dir, "causal-export")
    evaluation = stage.read(eval_dir, "causal-evaluate")["results"]
    files = exported["results"]["files"]
    if variant not in files:
        raise UsageError(f"--serve {variant!r}: the export holds {', '.join(files)}")
    if variant not in evaluation["variants"]:
        raise UsageError(f"--serve {variant!r} was not evaluated ({eval_dir}): run causal-evaluate again")
    staging = artifact.staging(out)
    shutil.copy(export_dir / files[variant], staging / MODEL)
    listed = [(MODEL, "model"), *artifact.copy_reports(eval_dir, staging)]
    chosen = evaluation["variants"][variant]
    results = {
        "temperature": chosen["temperature"],
        "thresholds": chosen["thresholds"],
        "metrics": {
            "served": variant,
            **chosen["metrics"],
            "variants": evaluation["summary"],
            "training": training(export_dir),
        },
        "samples": chosen.get("samples", []),
    }
    spec = TaskSpec.load(export_dir)
    manifest = build_manifest(staging, listed, spec, name, version or artifact.default_version(), results)
    return artifact.finish(staging, out, manifest, key, registry_dir)


def training(export_dir: Path) -> dict[str, object]:
    """How the served model was trained and merged (the manifest's `metrics.training`): LoRA or QLoRA, on how
    many processes in which precision, merged into which base, and how the merge agreed with the trained model."""
    merged = Path(stage.read(export_dir, "causal-export")["inputs"]["merged"]["path"])
    merge = stage.read(merged, "causal-merge")
    tuned = stage.read(Path(merge["inputs"]["adapter"]["path"]).parent, "causal-finetune")["params"]
    return {
        "mode": merge["params"].get("mode", tuned.get("mode")),
        **tuned.get("engine", {}),
        "merged_into": merge["params"].get("into"),
        "merge_agreement": merge["results"].get("saved"),
    }
