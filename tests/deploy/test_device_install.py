"""A device install must stay small: no torch, transformers, peft or optimum, at import or install."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edge_agent.contract.manifest import Manifest
from edge_agent.errors import ArtifactError
from edge_agent.runtimes.pool import default_loader
from tests.support.install import HEAVY, import_every_module


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")


def closure(dist: str, extras: set[str]) -> set[str]:
    """Every distribution `pip install dist[extras]` pulls, read from installed metadata."""
    seen: set[str] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            marker = req.split(";", 1)[1] if ";" in req else ""
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", marker)
            if extra and extra.group(1) not in wanted:
                continue
            if "python_version" in marker or "sys_platform" in marker or "platform_" in marker:
                continue  # not worth evaluating here; none of those pull heavy packages
            todo.append((_name(req), set()))
    return seen


def test_onnx_extra_pulls_nothing_heavy() -> None:
    pulled = closure("edge-agent", {"onnx"})
    assert {"onnxruntime", "tokenizers", "paho-mqtt"} <= pulled
    assert not pulled & HEAVY, pulled & HEAVY


def test_importing_every_module_loads_no_heavy_package() -> None:
    assert import_every_module(sys.executable) == []


def test_a_gguf_artifact_on_a_device_without_the_gguf_extra_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for module in ("edge_agent.runtimes.gguf", "edge_agent.runtimes.llamacpp"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails as if not installed
    entry = {"path": "model.gguf", "role": "model", "sha256": "0" * 64, "size": 0}
    manifest = Manifest(name="m", version="1", task="classify", runtime="gguf", files=[entry], labels=["a", "b"])
    with pytest.raises(ArtifactError, match=r"runtime gguf needs llama_cpp: pip install 'edge-agent\[gguf\]'"):
        default_loader(tmp_path, manifest, 1)
