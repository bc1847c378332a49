"""Test certificates made with the openssl CLI: CAs and the server certificates they sign (EC keys, seconds)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
SERVER_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> Issued:
    """A self-signed CA that may sign certificates (valid two days: long enough for any test run)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    extensions = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", *CURVE, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}", *extensions)
    return Issued(cert, key)


def issue_server(folder: Path, ca: Issued, name: str, alt_names: list[str]) -> Issued:
    """A server certificate signed by `ca` for `alt_names` (SAN entries such as "IP:127.0.0.1", "DNS:localhost")."""
    cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("crt", "key", "csr", "ext"))
    ext.write_text(SERVER_EXTENSIONS + f"subjectAltName={','.join(alt_names)}\n")
    _openssl("req", "-new", *CURVE, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    signer = ["-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial"]
    _openssl("x509", "-req", "-in", csr, *signer, "-out", cert, "-days", "2", "-extfile", ext)
    return Issued(cert, key)
