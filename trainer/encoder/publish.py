"""Stage `publish`: assemble the artifact folder the agent serves and write its manifest (+ signature).

Only what a device needs goes in: the int8 `model.onnx`, `tokenizer.json`, and the evaluation's
`report.json` / `report.png`. The folder is built beside the target and renamed into place, so a
reader never sees half an artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import artifact, stage
from trainer.encoder import base as encoder_base
from trainer.encoder import export
from trainer.encoder.data import Labels

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def run(
    export_dir: Path,
    out: Path,
    name: str,
    eval_dir: Path | None = None,
    version: str | None = None,
    key: Ed25519PrivateKey | None = None,
    registry_dir: Path | None = None,
    extra_reports: list[str] | None = None,
) -> Path:
    """Copy the served files into `out`, describe them in manifest.json, sign when a key is given;
    with `registry_dir`, also add the artifact to that registry. `extra_reports`: more report files
    of the evaluate folder (improve's comparison) to ship and hash."""
    artifact.check_identity(name, version)
    meta = stage.read(export_dir, "export")
    calibration = stage.read(eval_dir, "evaluate")["results"] if eval_dir else {}
    staging = artifact.staging(out)
    files = [(export.MODEL, "model"), (encoder_base.TOKENIZER, "tokenizer")]
    for relpath, _ in files:
        shutil.copy(export_dir / relpath, staging / relpath)
    if eval_dir:
        files += artifact.copy_reports(eval_dir, staging)
        rule = calibration.get("ood")
        if rule:  # the distance table the escalation rule reads
            shutil.copy(eval_dir / rule["file"], staging / rule["file"])
            files.append((rule["file"], "ood"))
        for relpath in extra_reports or []:
            shutil.copy(eval_dir / relpath, staging / relpath)
            files.append((relpath, "report"))
    manifest = export.build_manifest(
        staging, name, version or artifact.default_version(), files, Labels.load(export_dir), meta, calibration
    )
    return artifact.finish(staging, out, manifest, key, registry_dir)
