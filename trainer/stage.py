"""Every stage leaves `stage.json` beside its output: what ran, with which settings, on which inputs.

The next stage reads it instead of being told again, so an output folder carries what is needed to use it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.contract.manifest import sha256_file
from trainer.errors import UsageError

META = "stage.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_info(path: Path) -> dict[str, Any]:
    """How an input is recorded: where it was and its sha256, so a rerun can be compared."""
    if path.is_dir():
        return {"path": str(path)}
    return {"path": str(path), "sha256": sha256_file(path)}


def write(
    folder: Path, stage: str, params: dict[str, Any], inputs: dict[str, Path], results: dict[str, Any] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "stage": stage,
        "created": now(),
        "params": params,
        "inputs": {name: file_info(path) for name, path in inputs.items()},
        "results": results or {},
    }
    path = folder / META
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def work_dir(name: str, out: Path, work: Path | None = None) -> Path:
    """Intermediate stages live beside the artifact, never inside it: OUT/../.work-NAME/ (both paths)."""
    return work or out.parent / f".work-{name}"


def read(folder: Path, stage: str) -> dict[str, Any]:
    """The metadata of a stage's output folder; a clear error when the folder is something else."""
    path = folder / META
    if not path.is_file():
        raise UsageError(f"{folder}: not the output of `{stage}` (no {META})")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("stage") != stage:
        raise UsageError(f"{folder}: output of `{meta.get('stage')}`, expected `{stage}`")
    return meta
