"""The artifact contract: what the trainer writes and the agent reads, defined once.

An artifact is a folder holding `manifest.json`, optionally `manifest.sig` (an Ed25519 signature of
the manifest bytes, see `signing`), and the files the manifest lists with their sha256 and size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.contract import signing
from edge_agent.errors import ArtifactError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SCHEMA_VERSION = 4  # 2: label_scoring, base; 3: onnx.quantization; 4: ood, onnx.embedding

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # a model's name: a path segment, a topic level, a label value
NAME = re.compile(NAME_PATTERN)
# A version is a name, never a path: one safe path component (a store folder, a registry URL segment), never
# "." or "..", ordered by version_key. The trainer's default YYYYMMDD.HHMMSS and semver (1.2.3-rc.1+b7) fit.
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
VERSION = re.compile(VERSION_PATTERN)
VERSION_RULE = "1 to 64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
Task = Literal["classify", "extract", "classify+extract"]
RuntimeKind = Literal["onnx", "gguf"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FileEntry(_Strict):
    """One file of the artifact; `role` says what the runtime does with it."""

    path: str
    role: Literal["model", "tokenizer", "config", "report", "plot", "ood", "other"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Thresholds(_Strict):
    """Confidence under `escalate` means "not sure": the router may ask the cloud."""

    escalate: float = Field(default=0.0, ge=0.0, le=1.0)
    target_accuracy: float | None = None


class OnnxIO(_Strict):
    """Names of the graph's inputs and outputs, so the runtime needs no guessing."""

    inputs: list[str] = ["input_ids", "attention_mask"]
    intent_logits: str | None = "intent_logits"
    tag_logits: str | None = "tag_logits"
    quantization: Literal["static", "dynamic", "none"] | None = Field(
        default=None,
        description="int8 'static' (QDQ, activation scales fixed at calibration) or 'dynamic' (scales taken from "
        "each call's whole batch); 'none': float. Unset (older artifacts): taken as dynamic.",
    )

    embedding: str | None = Field(
        default=None, description="the pooled sentence embedding the intent head reads (for the distance score)"
    )

    @property
    def kind(self) -> str:
        """The quantization, artifacts from before the field read as the dynamic int8 they are."""
        return self.quantization or "dynamic"

    @property
    def batch_independent(self) -> bool:
        """Whether a text's answer is the same alone and in a batch: dynamic int8 scales over the batch."""
        return self.kind in ("static", "none")


class Ood(_Strict):
    """How unlike the training data a text is: the Mahalanobis distance of its pooled embedding to the
    nearest intent's mean (shared covariance), from the `ood` file. Softmax confidence says how sure the
    model is among the labels it knows; this says whether the text looks like any of them at all.

    The trainer chose `rule` on dev: `softmax` (confidence only; the distance is reported, not used),
    `distance` (distance only) or `either` (escalate when confidence is low or the distance high).
    """

    score: Literal["mahalanobis"] = "mahalanobis"
    file: str = Field(description="float32 .npy: the whitened class means, then the whitening matrix")
    rule: Literal["softmax", "distance", "either"]
    threshold: float | None = Field(default=None, ge=0.0, description="distance above it escalates")
    dev: dict[str, Any] = Field(default={}, description="what each rule gave on dev, and why this one")

    @property
    def max_distance(self) -> float | None:
        """The distance limit the router applies; None when the rule leaves it to the softmax."""
        return None if self.rule == "softmax" else self.threshold


class Prompt(_Strict):
    """For causal LMs: the exact template and stops used in training, so serving cannot drift.

    Token ids, in training and serving alike: [BOS if add_bos] + ids(before) + plain(text) + ids(after);
    the answer is plain(answer) + ids(end). `ids` splits a piece at the `specials` strings, each of
    which is one token, and tokenizes the runs between them as plain text, without BOS; `plain` never
    parses control tokens, so a request cannot smuggle one in.
    """

    template: str = Field(pattern=r"\{text\}", description="holds `{text}` where the request goes")
    stop: list[str] = []
    eos: str | None = None
    add_bos: bool = True
    specials: list[str] = Field(default=[], description="control tokens the template and end use")

    def parts(self) -> tuple[str, str]:
        """The template before and after the request text."""
        before, _, after = self.template.partition("{text}")
        return before, after

    @property
    def end(self) -> str:
        """What closes an answer: the first stop string (a chat template's end of turn), else EOS."""
        if self.stop:
            return self.stop[0]
        if self.eos is None:
            raise ArtifactError("prompt has neither a stop string nor an EOS token")
        return self.eos

    def split(self, piece: str) -> list[tuple[str, bool]]:
        """A template piece as (run, is_special) in order; empty runs dropped."""
        if not self.specials:
            return [(piece, False)] if piece else []
        pattern = "(" + "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True)) + ")"
        return [(run, run in self.specials) for run in re.split(pattern, piece) if run]


class Base(_Strict):
    """What a causal model was fine-tuned from when that was a GGUF file: it was quantized before
    training, and the artifact says so (file, sha256, llama.cpp's quantization type)."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    quantization: str | None = None
    name: str | None = None


class Sample(_Strict):
    """A warm-up input and the answer the build box's model gave it: a device must give the same."""

    text: str = Field(min_length=1)
    label: str | None = None
    fields: dict[str, Any] | None = None


class Manifest(_Strict):
    """Everything a device needs to serve a model, and the evidence of how good it is."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=rf"^{NAME_PATTERN}$")
    version: str = Field(pattern=rf"^{VERSION_PATTERN}$")
    task: Task
    runtime: RuntimeKind
    files: list[FileEntry] = Field(min_length=1)
    labels: list[str] = []
    entity_types: list[str] = []
    tags: list[str] = Field(default=[], description="BIO tag set, index = output column")
    max_input_tokens: int = Field(default=128, ge=8)
    max_input_chars: int = Field(default=2000, ge=1)
    temperature: float = Field(default=1.0, gt=0.0, description="logits are divided by it")
    thresholds: Thresholds = Thresholds()
    tokenizer: dict[str, Any] = {}
    onnx: OnnxIO | None = None
    ood: Ood | None = None
    prompt: Prompt | None = None
    fields_schema: dict[str, Any] | None = None
    max_answer_tokens: int | None = Field(
        default=None, ge=1, description="extraction: longest answer generated (bounds the context's KV memory)"
    )
    metrics: dict[str, Any] = {}
    samples: list[Sample] = Field(default=[], description="warm-up inputs with the answers expected on a device")
    label_scoring: Literal["tree", "full"] = Field(
        default="full",
        description="gguf classify: 'tree', the label set's own distribution (logits only where its token tree "
        "branches), or 'full', each label's every token; the temperature was fitted for this one",
    )
    base_model: str | None = None
    base: Base | None = None
    data: dict[str, Any] = {}
    created: str | None = None

    @model_validator(mode="after")
    def _ood_file_is_listed(self) -> Manifest:
        """The distance table is hashed like every file: it must be one of `files`, with role `ood`."""
        if self.ood is not None and not any(f.path == self.ood.file and f.role == "ood" for f in self.files):
            raise ValueError(f"ood.file {self.ood.file!r} is not among the files (role ood)")
        return self

    @property
    def max_distance(self) -> float | None:
        """The distance limit the router applies (none without an `ood` section or under the softmax rule)."""
        return self.ood.max_distance if self.ood is not None else None

    def file(self, role: str) -> FileEntry:
        """The first file with this role; an ArtifactError names the artifact when there is none."""
        for entry in self.files:
            if entry.role == role:
                return entry
        raise ArtifactError(f"artifact {self.name}: manifest lists no {role} file")


CLOUD_ONLY = "cloud-only"


def cloud_only(name: str, labels: list[str]) -> Manifest:
    """A model with no artifact yet (a cold start): the cloud answers within `labels`, every answer is
    kept as feedback, and the first `edge-trainer improve` makes its first local model. Never written
    to disk nor loaded by a runtime: it lists no files."""
    return Manifest.model_construct(
        files=[],
        name=name,
        version=CLOUD_ONLY,
        task="classify",
        runtime="onnx",
        labels=list(labels),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(folder: Path, relpath: str, role: str) -> FileEntry:
    """Describe a file already inside the artifact folder."""
    path = folder / relpath
    return FileEntry(path=relpath, role=role, sha256=sha256_file(path), size=path.stat().st_size)  # type: ignore[arg-type]


def write(folder: Path, manifest: Manifest, key: Ed25519PrivateKey | None = None) -> Path:
    """Write manifest.json (and manifest.sig when a key is given) into the artifact folder."""
    raw = (manifest.model_dump_json(indent=2, exclude_none=True) + "\n").encode()
    (folder / MANIFEST).write_bytes(raw)
    (folder / SIGNATURE).unlink(missing_ok=True)  # a stale signature would be refused, not ignored
    if key is not None:
        (folder / SIGNATURE).write_text(signing.sign(raw, key) + "\n")
    return folder / MANIFEST


def parse(raw: bytes, where: Path) -> Manifest:
    """Manifest bytes as a Manifest; a format newer than this agent's is named as such, not as a typo."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: not JSON: {exc}") from None
    version = doc.get("schema_version", SCHEMA_VERSION) if isinstance(doc, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: manifest format {version} is newer than this agent reads ({SCHEMA_VERSION}): upgrade edge-agent"
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{where}: invalid manifest: {loc}: {first['msg']}") from None


def read(folder: Path) -> Manifest:
    """Parse the manifest without touching the model files."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest.json (is this an artifact folder?)")
    return parse(path.read_bytes(), path)


def load(folder: Path, trusted: Sequence[Ed25519PublicKey] = ()) -> Manifest:
    """Read and verify an artifact: its signature (when keys are trusted) and every file's sha256."""
    if trusted:
        verify_signature(folder, trusted)
    manifest = read(folder)
    for problem in verify_files(folder, manifest):
        raise ArtifactError(problem)
    return manifest


def verify_signature(folder: Path, trusted: Sequence[Ed25519PublicKey]) -> str:
    """The id of the key that signed; ArtifactError when unsigned, unknown or not matching."""
    sig_path = folder / SIGNATURE
    if not sig_path.is_file():
        raise ArtifactError(f"{sig_path}: missing signature (this device trusts signed artifacts only)")
    return signing.verify((folder / MANIFEST).read_bytes(), sig_path.read_text(), trusted, sig_path)


def verify_files(folder: Path, manifest: Manifest) -> list[str]:
    """Every mismatch, one line each, naming the file."""
    problems = []
    for entry in manifest.files:
        path = folder / entry.path
        if not path.resolve().is_relative_to(folder.resolve()):
            problems.append(f"{path}: file path escapes the artifact folder")
        elif not path.is_file():
            problems.append(f"{path}: missing (listed in manifest)")
        elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 does not match the manifest (corrupted or replaced)")
    return problems


def dumps(manifest: Manifest) -> str:
    """A compact JSON rendering for logs and status."""
    return json.dumps({"name": manifest.name, "version": manifest.version, "task": manifest.task})


def check_version(version: object, where: str = "version") -> str:
    """The version, if it is one (VERSION_RULE); else one ArtifactError line. Every path built from a version
    passes here first."""
    if isinstance(version, str) and VERSION.fullmatch(version):
        return version
    shown = repr(version)[:80]
    raise ArtifactError(f"{where} {shown}: not a version ({VERSION_RULE})")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order of versions: dot/dash-separated parts, numbers numerically (`1.10` > `1.9`), and any
    number after any word, so the trainer's default `YYYYMMDD.HHMMSS` versions order by time."""
    return tuple((0, p) if not p.isdigit() else (1, int(p)) for p in re.split(r"[.\-+_]", version))
