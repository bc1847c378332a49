"""Stage `publish`: assemble the artifact folder the agent serves and write its manifest (+ signature).

Only what a device needs goes in: the int8 `model.onnx`, `tokenizer.json`, and the evaluation's
`report.json` / `report.png`. The folder is built beside the target and renamed into place, so a
reader never sees half an artifact.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from edge_agent import manifest as mf
from edge_agent import signing
from trainer import encoder, export, registry, stage
from trainer.data import Labels
from trainer.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPORT, PLOT = "report.json", "report.png"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as edge_agent.manifest.Manifest.name


def run(
    export_dir: Path,
    out: Path,
    name: str,
    eval_dir: Path | None = None,
    version: str | None = None,
    key: Ed25519PrivateKey | None = None,
    registry_dir: Path | None = None,
) -> Path:
    """Copy the served files into `out`, describe them in manifest.json, sign when a key is given;
    with `registry_dir`, also add the artifact to that registry."""
    check_identity(name, version)
    meta = stage.read(export_dir, "export")
    calibration = stage.read(eval_dir, "evaluate")["results"] if eval_dir else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    files = [(export.MODEL, "model"), (encoder.TOKENIZER, "tokenizer")]
    for relpath, _ in files:
        shutil.copy(export_dir / relpath, staging / relpath)
    if eval_dir:
        files += _copy_reports(eval_dir, staging)
    manifest = build_manifest(
        staging, name, version or default_version(), files, Labels.load(export_dir), meta, calibration
    )
    mf.write(staging, manifest, key)
    _replace(staging, out)
    if registry_dir is not None:
        registry.add(out, registry_dir)
    return out


def _copy_reports(eval_dir: Path, staging: Path) -> list[tuple[str, str]]:
    copied = []
    for relpath, role in ((REPORT, "report"), (PLOT, "plot")):
        if (eval_dir / relpath).is_file():
            shutil.copy(eval_dir / relpath, staging / relpath)
            copied.append((relpath, role))
    return copied


def build_manifest(
    folder: Path,
    name: str,
    version: str,
    files: list[tuple[str, str]],
    labels: Labels,
    export_meta: dict[str, Any],
    calibration: dict[str, Any],
) -> mf.Manifest:
    """The manifest for the files in `folder`; `calibration` is the evaluate stage's results (may be empty)."""
    tokenizer = Tokenizer.from_file(str(folder / encoder.TOKENIZER))
    extract = bool(labels.entity_types)
    return mf.Manifest(
        name=name,
        version=version,
        runtime="onnx",
        task="classify+extract" if extract else "classify",
        files=[mf.file_entry(folder, relpath, role) for relpath, role in files],
        labels=labels.intents,
        entity_types=labels.entity_types,
        tags=labels.tags,
        max_input_tokens=labels.max_tokens,
        temperature=calibration.get("temperature", 1.0),
        thresholds=mf.Thresholds(**calibration.get("thresholds", {})),
        tokenizer={"file": encoder.TOKENIZER, "vocab_size": tokenizer.get_vocab_size(), "add_special_tokens": True},
        onnx=mf.OnnxIO(
            inputs=export_meta["params"]["inputs"],
            intent_logits="intent_logits",
            tag_logits="tag_logits",
        ),
        metrics=calibration.get("metrics", {}),
        samples=[mf.Sample(**s) for s in calibration.get("samples", [])],
        base_model=export_meta["params"]["base_model"],
        data=export_meta["params"]["data"],
        created=stage.now(),
    )


def default_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d.%H%M%S")


def _replace(staging: Path, out: Path) -> None:
    """Swap the finished folder into place; the old artifact is removed only after the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def check_identity(name: str, version: str | None) -> None:
    """Refuse a bad name or version before hours of training, not after."""
    if not NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, starting alnum)")
    if version is not None and not 1 <= len(version) <= 64:
        raise UsageError(f"--version {version!r}: 1 to 64 characters")


def read_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The Ed25519 private key that signs artifacts (`edge-trainer keygen` makes one)."""
    if path is None:
        return None
    try:
        return signing.load_private(path)
    except ValueError as exc:
        raise UsageError(f"signing key: {exc}") from None
