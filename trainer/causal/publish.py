"""Stage `causal-publish`: one GGUF variant, its evaluation and the manifest the agent serves it by.

The manifest carries the prompt contract (template, stops, EOS, BOS, control tokens), the labels
or the fields schema, temperature and threshold fitted on dev, and the measured numbers of every
variant (reference f16/f32, Q8_0, Q4_K_M) with each file's real tensor-type mix, so the cost of
quantization is on record where the model is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import manifest as mf
from trainer import publish, registry, stage
from trainer.causal.data import TaskSpec
from trainer.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MODEL = "model.gguf"


def build_manifest(
    folder: Path,
    files: list[tuple[str, str]],
    spec: TaskSpec,
    name: str = "candidate",
    version: str = "0",
    evaluation: dict[str, Any] | None = None,
) -> mf.Manifest:
    """The manifest for files already in `folder`; `evaluation` is the evaluate stage's results."""
    results = evaluation or {}
    return mf.Manifest(
        name=name,
        version=version,
        task=spec.task,
        runtime="gguf",
        files=[mf.file_entry(folder, relpath, role) for relpath, role in files],
        labels=spec.labels,
        max_input_tokens=spec.max_input_tokens,
        temperature=results.get("temperature", 1.0),
        thresholds=mf.Thresholds(**results.get("thresholds", {})),
        tokenizer=spec.tokenizer,
        prompt=spec.prompt_model,
        fields_schema=spec.fields_schema,
        max_answer_tokens=spec.max_answer_tokens,
        metrics=results.get("metrics", {}),
        samples=[mf.Sample(**sample) for sample in results.get("samples", [])],
        base_model=Path(spec.base).name,
        data=spec.data,
        created=stage.now(),
    )


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
    publish.check_identity(name, version)
    exported = stage.read(export_dir, "causal-export")
    evaluation = stage.read(eval_dir, "causal-evaluate")["results"]
    files = exported["results"]["files"]
    if variant not in files:
        raise UsageError(f"--serve {variant!r}: the export holds {', '.join(files)}")
    if variant not in evaluation["variants"]:
        raise UsageError(f"--serve {variant!r} was not evaluated ({eval_dir}): run causal-evaluate again")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    shutil.copy(export_dir / files[variant], staging / MODEL)
    listed = [(MODEL, "model")]
    for relpath, role in ((publish.REPORT, "report"), (publish.PLOT, "plot")):
        if (eval_dir / relpath).is_file():
            shutil.copy(eval_dir / relpath, staging / relpath)
            listed.append((relpath, role))
    chosen = evaluation["variants"][variant]
    results = {
        "temperature": chosen["temperature"],
        "thresholds": chosen["thresholds"],
        "metrics": {"served": variant, **chosen["metrics"], "variants": evaluation["summary"]},
        "samples": chosen.get("samples", []),
    }
    spec = TaskSpec.load(export_dir)
    manifest = build_manifest(staging, listed, spec, name, version or publish.default_version(), results)
    mf.write(staging, manifest, key)
    publish._replace(staging, out)  # the encoder path's atomic swap: the old artifact goes only when the new is whole
    if registry_dir is not None:
        registry.add(out, registry_dir)
    return out
