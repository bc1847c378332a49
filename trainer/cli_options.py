"""Options the encoder and causal verbs share, in one place so both paths sign and publish alike."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_signing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signing-key-file", type=Path, help="Ed25519 private key (PEM, edge-trainer keygen): manifest.sig")
    p.add_argument("--registry", type=Path, help="also add the artifact to this registry folder ({name}/{version}/)")
