"""Signed registries for tests, built by the trainer's own code from a tiny artifact.

Variants are real artifacts, re-signed after the change, so each passes the signature check and
fails (or not) where a real one would: wrong warm-up answers, a model too slow for any deadline.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from trainer import registry as trainer_registry

Change = Callable[[Path, mf.Manifest], mf.Manifest]
MATMULS = 30  # 1024 x 1024 each


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def make_keys(folder: Path) -> Keys:
    private, public = signing.keygen(folder)
    return Keys(private, public)


def variant(artifact: Path, out: Path, version: str, key: Path | None, change: Change | None = None) -> Path:
    """A copy of `artifact` as `version` (changed by `change`, then re-described and signed)."""
    shutil.copytree(artifact, out)
    manifest = mf.read(out).model_copy(update={"version": version})
    if change is not None:
        manifest = change(out, manifest)
    manifest = manifest.model_copy(update={"files": [mf.file_entry(out, f.path, f.role) for f in manifest.files]})
    mf.write(out, manifest, signing.load_private(key) if key else None)
    return out


def publish(registry: Path, artifact: Path, version: str, keys: Keys | None, change: Change | None = None) -> Path:
    """Add a variant of `artifact` to `registry` as the trainer's publish would; the registry folder."""
    build = registry.parent / f".build-{artifact.name}-{version}"
    shutil.rmtree(build, ignore_errors=True)
    variant(artifact, build, version, keys.private if keys else None, change)
    folder = trainer_registry.add(build, registry)
    shutil.rmtree(build)
    return folder


def wrong_samples(_folder: Path, manifest: mf.Manifest) -> mf.Manifest:
    """Warm-up answers the model will not give: each sample expects another label."""
    labels = manifest.labels
    wrong = [
        s.model_copy(update={"label": labels[(labels.index(s.label) + 1) % len(labels)]}) for s in manifest.samples
    ]
    return manifest.model_copy(update={"samples": wrong})


def slow_model(folder: Path, manifest: mf.Manifest) -> mf.Manifest:
    """The same answers after ~60 GFLOP of work the runtime cannot skip (~150 ms on 2 cores where the
    tiny model takes 1 ms): it passes warm-up (no deadline) and times out on every request with a
    deadline of 50 ms."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    path = folder / manifest.file("model").path
    model = onnx.load(str(path))
    graph = model.graph
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((1024, 1024)) * 1e-3).astype(np.float32)
    graph.initializer.extend(
        [numpy_helper.from_array(weight, "slow_w"), numpy_helper.from_array(np.float32(0), "zero")]
    )
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["slow_ids"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["slow_ids"], ["slow_s"], keepdims=0),  # depends on the input: not folded
        helper.make_node("Mul", ["slow_w", "slow_s"], ["slow_0"]),
    ]
    for i in range(MATMULS):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{MATMULS}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "zero"], ["slow_nothing"]),
    ]
    logits = next(o for o in graph.output if o.name == manifest.onnx.intent_logits)  # type: ignore[union-attr]
    for node in graph.node:
        node.output[:] = [f"{o}_fast" if o == logits.name else o for o in node.output]
    nodes.append(helper.make_node("Add", [f"{logits.name}_fast", "slow_nothing"], [logits.name]))
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return manifest


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A real static HTTP server on loopback serving `folder`; yields its base URL."""
    with http_server(functools.partial(_Quiet, directory=str(folder))) as url:
        yield url


@contextmanager
def http_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threading HTTP server on a free loopback port, answering with `handler`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def settings_file(folder: Path, url: str, keys: list[Path], **extra: object) -> Path:
    """agent.yaml naming the registry and the trusted keys (plus `extra` settings)."""
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump({"registry": {"url": url}, "trusted_keys": [str(k) for k in keys], **extra}))
    return path
