"""A registry is just files: `{name}/{version}/` (the artifact as published) and `{name}/latest.json`.

Any folder, static HTTP server, S3 bucket or nginx can serve one. A version, once published, never
changes: publishing different bytes under the same version is refused, so a device that has it knows
what it has. `latest.json` moves forward only; an older version can still be published beside it.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import tempfile
from pathlib import Path

from edge_agent.contract import manifest as mf
from trainer.errors import UsageError

LATEST = "latest.json"


def add(artifact: Path, registry: Path) -> Path:
    """Copy the artifact folder into the registry and point latest.json at it when it is the newest."""
    manifest = mf.read(artifact)
    folder = registry / manifest.name / manifest.version
    if folder.exists():
        if not _same(artifact, folder, manifest):
            raise UsageError(f"{folder}: version {manifest.version} is already published with other files")
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=folder.parent))
        shutil.copytree(artifact, staging, dirs_exist_ok=True)
        staging.rename(folder)
    _advance(folder.parent / LATEST, manifest)
    return folder


def _same(artifact: Path, folder: Path, manifest: mf.Manifest) -> bool:
    names = [mf.MANIFEST, mf.SIGNATURE, *(entry.path for entry in manifest.files)]
    existing = [n for n in names if (artifact / n).exists() or (folder / n).exists()]
    _, mismatch, errors = filecmp.cmpfiles(artifact, folder, existing, shallow=False)
    return not mismatch and not errors


def _advance(latest: Path, manifest: mf.Manifest) -> None:
    current = json.loads(latest.read_text())["version"] if latest.is_file() else None
    if current is not None and mf.version_key(current) >= mf.version_key(manifest.version):
        return
    doc = {"name": manifest.name, "version": manifest.version, "created": manifest.created}
    tmp = latest.with_name(f".{LATEST}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, latest)  # a reader sees the old or the new pointer, never half of one
