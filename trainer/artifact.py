"""What both paths share about the artifact they make: the options of both `build` verbs, its name and
version, the manifest fields every runtime fills alike, the signing key, and a folder built beside its
target and swapped in whole (a reader never sees half an artifact), then copied into a registry.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from trainer import registry, stage
from trainer.errors import UsageError
from trainer.report import DEFAULT_TARGET, PLOT, REPORT

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(kw_only=True)
class Build:
    """What both `build` verbs take beyond the data and the base: where the artifact and the stages go,
    the test file and accuracy target it is scored by, and how it is versioned, signed and published."""

    name: str
    out: Path
    work: Path | None = None
    test: Path | None = None
    max_tokens: int = 64
    target_accuracy: float = DEFAULT_TARGET
    version: str | None = None
    key: Ed25519PrivateKey | None = None
    registry: Path | None = None


def check_identity(name: str, version: str | None) -> None:
    """Refuse a bad name or version before hours of training, not after."""
    if not mf.NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, starting alnum)")
    if version is not None and not mf.VERSION.fullmatch(version):
        raise UsageError(f"--version {version!r}: {mf.VERSION_RULE}")


def default_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d.%H%M%S")


def read_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The Ed25519 private key that signs artifacts (`edge-trainer keygen` makes one)."""
    if path is None:
        return None
    try:
        return signing.load_private(path)
    except ValueError as exc:
        raise UsageError(f"signing key: {exc}") from None


def manifest(folder: Path, files: list[tuple[str, str]], results: dict[str, Any], **fields: Any) -> mf.Manifest:
    """A manifest for files already in `folder`: their sha256 entries and what an evaluate stage fitted and
    measured (`results`, may be empty); `fields` are the path's own (runtime, labels, tokenizer, ...)."""
    return mf.Manifest(
        files=[mf.file_entry(folder, relpath, role) for relpath, role in files],
        temperature=results.get("temperature", 1.0),
        thresholds=mf.Thresholds(**results.get("thresholds", {})),
        metrics=results.get("metrics", {}),
        samples=[mf.Sample(**sample) for sample in results.get("samples", [])],
        created=stage.now(),
        **fields,
    )


def staging(out: Path) -> Path:
    """An empty folder beside `out`, on the same file system, for `publish` to fill."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def copy_reports(eval_dir: Path, into: Path) -> list[tuple[str, str]]:
    """The evaluation's report.json and report.png, where it wrote them, as (path, role) entries."""
    copied = []
    for relpath, role in ((REPORT, "report"), (PLOT, "plot")):
        if (eval_dir / relpath).is_file():
            shutil.copy(eval_dir / relpath, into / relpath)
            copied.append((relpath, role))
    return copied


def finish(
    folder: Path,
    out: Path,
    document: mf.Manifest,
    key: Ed25519PrivateKey | None = None,
    registry_dir: Path | None = None,
) -> Path:
    """Write manifest.json (+ manifest.sig with a key) into the staged folder, swap it in as `out`, and
    add it to `registry_dir` when given."""
    mf.write(folder, document, key)
    replace(folder, out)
    if registry_dir is not None:
        registry.add(out, registry_dir)
    return out


def replace(folder: Path, out: Path) -> None:
    """Swap the finished folder into place; the old artifact is removed only after the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        folder.rename(out)
        shutil.rmtree(old)
    else:
        folder.rename(out)
