"""Artifact signatures: Ed25519 over manifest.json, which holds every file's sha256 and size.

The build box keeps the private key; devices hold only public keys (a list, so a fleet can rotate).
A stolen device can therefore verify artifacts but never sign one. `manifest.sig` is a small JSON
document naming the key that signed, so a device with several trusted keys knows which to use.

Why not the OpenSSF model-signing format: its dependency closure (sigstore, tuf, protobuf, rich, ...)
adds about 54 MB to a device install (measured 2026-12-01, aarch64 wheels); `cryptography` alone adds 18 MB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import ArtifactError

SCHEME = "ed25519"
PRIVATE, PUBLIC = "signing.key", "signing.pub"
_HMAC = re.compile(r"[0-9a-f]{64}")


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex of sha256 over its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(raw: bytes, private: Ed25519PrivateKey) -> str:
    """The text of manifest.sig for these manifest bytes."""
    signature = base64.b64encode(private.sign(raw)).decode()
    return json.dumps({"scheme": SCHEME, "key_id": key_id(private.public_key()), "signature": signature})


def verify(raw: bytes, sig_text: str, trusted: Sequence[Ed25519PublicKey], where: Path) -> str:
    """The id of the trusted key that signed `raw`; ArtifactError with one line saying what is wrong."""
    if _HMAC.fullmatch(sig_text.strip()):
        raise ArtifactError(
            f"{where}: signed with the retired HMAC fleet key; re-publish it with an Ed25519 key (edge-trainer keygen)"
        )
    kid, signature = _parse(sig_text, where)
    keys = {key_id(k): k for k in trusted}
    if kid not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise ArtifactError(f"{where}: signed by key {kid}, which this device does not trust (trusted: {known})")
    try:
        keys[kid].verify(signature, raw)
    except InvalidSignature:
        raise ArtifactError(f"{where}: signature does not match manifest.json (changed after signing)") from None
    return kid


def _parse(sig_text: str, where: Path) -> tuple[str, bytes]:
    try:
        doc = json.loads(sig_text)
        if not isinstance(doc, dict) or doc.get("scheme") != SCHEME:
            raise ValueError(f"scheme is not {SCHEME}")
        return str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ArtifactError(f"{where}: not an {SCHEME} signature ({exc})") from None


def load_private(path: Path) -> Ed25519PrivateKey:
    """A private key file (PEM); ValueError with one line naming the file otherwise."""
    key = _pem(path, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(
            f"{path}: not an Ed25519 private key in PEM (the HMAC fleet key is retired: edge-trainer keygen)"
        )
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """A public key file (PEM); ValueError with one line naming the file otherwise."""
    key = _pem(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key in PEM")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None


def _pem(path: Path, parse: Callable[[bytes], object]) -> object:
    """The key object a PEM file holds, or None for anything that is not one (never a raw exception)."""
    data = _read(path)
    if not data.lstrip().startswith(b"-----BEGIN "):
        return None
    try:
        return parse(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def keygen(out: Path) -> tuple[Path, Path]:
    """A new key pair in `out`: signing.key (readable by its owner only) and signing.pub; never overwrites."""
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(out / PRIVATE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    (out / PUBLIC).write_bytes(public)
    return out / PRIVATE, out / PUBLIC
