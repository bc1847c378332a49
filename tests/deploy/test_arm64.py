"""The device install on aarch64: what a Raspberry Pi (OS bookworm, Python 3.11.2) gets from the README's steps.

scripts/arm64-root builds an arm64 Debian bookworm root once (cached outside the repository) and installs
`edge-agent[onnx]` into a venv there from PyPI's aarch64 wheels; qemu-user runs its binaries. An artifact built on
x86 must get the x86 agent's answers there, from `classify` and from the daemon over MQTT, and a static int8 model
must answer the same alone and in a batch of 32 on ARM's kernels too. PyPI has no aarch64 llama-cpp-python wheel:
scripts/arm64-llama-wheel cross-compiles one here (a board compiles its own, README "Raspberry Pi"), and a second
venv with `edge-agent[onnx,gguf]` serves a GGUF artifact with it as x86 does.

Neither /proc nor /sys is mounted in the root. With both, qemu-user (Debian bookworm's 7.2) shows the aarch64 process
the host's files, and onnxruntime's cpuinfo (pytorch/cpuinfo) finds CPUs in /sys but parses an x86 /proc/cpuinfo (no
`CPU implementer`, `CPU part` lines) and crashes (SIGSEGV) at import. With either missing it warns and falls back;
with both mounted and a Cortex-A72's, A76's or A78AE's /proc/cpuinfo bound over the x86 one it imports with no
warning at all. A board's kernel writes ARM's /proc/cpuinfo (newer qemu-user fakes one too: its
linux-user/aarch64/target_proc.h), so the crash is this emulator's, not something a Pi or Jetson hits; the unit
keeps /proc/cpuinfo visible (no ProcSubset=pid) for the same reader.

QEMU_CPU picks the emulated core, so the int8 kernels chosen are a board's: cortex-a72 (Pi 4: no dot product
instructions) and cortex-a76 (Pi 5; Jetson Orin's A78AE has the same dot product instructions).
Emulated timings here are no device figures.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.agent import run_cli, start_agent, write_models
from tests.support.broker import Broker, client
from tests.support.install import HEAVY, import_every_module
from tests.trainer.encoder.test_static_int8 import TEXTS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("EDGE_AGENT_ARM64_ROOT", "/var/cache/edge-agent-ci/arm64-bookworm"))
VENV, GGUF_VENV = "/opt/edge-agent/venv", "/opt/edge-agent/venv-gguf"
PI4, PI5 = "cortex-a72", "cortex-a76"
CLASSIFIED = ["turn off the lights in the kitchen", "will it rain today", "lights on in the living room"]

INSTALLED = """
import json, platform, sys
from importlib import metadata
names = [dist.metadata["Name"] for dist in metadata.distributions()]
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "installed": names}))
"""

# Every text alone, then all of them in one batch, on the agent's own runtime.
ALONE_AND_BATCH = """
import ctypes, json, sys
from pathlib import Path
from edge_agent.contract import manifest
from edge_agent.runtimes.onnx import OnnxRuntime
folder, texts = Path(sys.argv[1]), json.loads(sys.argv[2])
runtime = OnnxRuntime(folder, manifest.load(folder), 1)
def answer(p):
    return {"label": p.label, "confidence": p.confidence, "entities": [e.as_dict() for e in p.entities]}
hwcap = ctypes.CDLL(None).getauxval(16)  # AT_HWCAP: what the kernel (here qemu) says the core has
print(json.dumps({
    "dotprod": bool(hwcap & (1 << 20)),  # HWCAP_ASIMDDP: the int8 dot product kernels
    "static": runtime.io.quantization == "static" and runtime.io.batch_independent,
    "alone": [answer(runtime.predict([t])[0]) for t in texts],
    "batch": [answer(p) for p in runtime.predict(texts)],
    "alone_logits": [runtime.logits([t])[0].tolist() for t in texts],
    "batch_logits": runtime.logits(texts).tolist(),
}))
"""


@dataclass(frozen=True)
class ArmRoot:
    """The cached arm64 root and this module's folder inside it (host paths; `inside` maps them)."""

    root: Path
    work: Path

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def command(self, *args: str, cpu: str = PI4) -> list[str]:
        """`args` run in the root by the venv, in a clean environment (as systemd would start it)."""
        clean = ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}"]
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *clean, *args]

    def python(self, *args: str, cpu: str = PI4, venv: str = VENV) -> str:
        done = subprocess.run(self.command(f"{venv}/bin/python", *args, cpu=cpu), capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def python_launcher(self, folder: Path, cpu: str = PI4) -> Path:
        """An executable that runs the root's python with the caller's EDGE_AGENT_* settings (spawn_agent's python)."""
        launcher = folder / f"python-arm64-{cpu}"
        command = shlex.join(self.command(cpu=cpu))
        launcher.write_text(f'#!/bin/sh\nexec {command} $(env | grep "^EDGE_AGENT_") {VENV}/bin/python "$@"\n')
        launcher.chmod(0o755)
        return launcher


def script(name: str, *args: str) -> str:
    """A scripts/ builder's last line of output (the path it made), minutes when its cache is cold."""
    done = subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def arm() -> Iterator[ArmRoot]:
    """The root with both venvs, built by scripts/arm64-root (and the llama-cpp-python wheel by
    scripts/arm64-llama-wheel) when missing or stale; root only: debootstrap, binfmt_misc, chroot."""
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        why = "the arm64 root needs root (debootstrap, binfmt_misc, chroot)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must test the aarch64 device install: {why}", pytrace=False)
        pytest.skip(why)
    assert script("arm64-root", str(CACHE), script("arm64-llama-wheel")) == str(CACHE)
    work = CACHE / "tmp" / f"edge-agent-test-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    yield ArmRoot(CACHE, work)
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def models(arm: ArmRoot, tiny_artifact: Path) -> tuple[Path, Path]:
    """models.yaml serving the x86-built artifact: (the host's, the root's copy)."""
    shutil.copytree(tiny_artifact, arm.work / "tiny")
    host_dir, root_dir = tiny_artifact.parent / "x86", arm.work / "models"
    host_dir.mkdir(exist_ok=True)
    root_dir.mkdir()
    host = write_models(host_dir, [{"name": "tiny", "path": str(tiny_artifact)}])
    return host, write_models(root_dir, [{"name": "tiny", "path": arm.inside(arm.work / "tiny")}])


def assert_same_answer(arm: dict[str, Any], x86: dict[str, Any], text: str) -> None:
    assert arm["label"] == x86["label"], text
    assert arm["confidence"] == pytest.approx(x86["confidence"], abs=1e-3), text
    spans = [[{k: v for k, v in e.items() if k != "confidence"} for e in a["entities"]] for a in (arm, x86)]
    assert spans[0] == spans[1], text
    for a, b in zip(arm["entities"], x86["entities"], strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3), text


def test_the_root_has_the_device_install_on_aarch64_python_3112(arm: ArmRoot) -> None:
    found = json.loads(arm.python("-c", INSTALLED))
    installed = {name.lower().replace("_", "-") for name in found["installed"]}
    assert (found["machine"], found["python"]) == ("aarch64", "3.11.2")
    assert {"edge-agent", "onnxruntime", "tokenizers", "paho-mqtt"} <= installed
    assert not installed & HEAVY, installed & HEAVY


def test_every_module_imports_on_aarch64(arm: ArmRoot, tmp_path: Path) -> None:
    """The gguf runtime needs the [gguf] extra (llama.cpp built on the board, README "Jetson"): compiled only."""
    launcher = arm.python_launcher(tmp_path)
    assert import_every_module(str(launcher), lacking=("llama_cpp",)) == [
        "edge_agent.runtimes.gguf",
        "edge_agent.runtimes.llamacpp",
    ]


def test_check_and_classify_answer_as_on_x86(arm: ArmRoot, models: tuple[Path, Path]) -> None:
    host, inside = str(models[0]), arm.inside(models[1])
    assert arm.python("-m", "edge_agent", "check", "--models", inside).startswith("ok: 1 model(s)")
    for text in CLASSIFIED:
        x86 = run_cli("classify", "--models", host, "--model", "tiny", text)
        assert x86.returncode == 0, x86.stderr
        answer = arm.python("-m", "edge_agent", "classify", "--models", inside, "--model", "tiny", text)
        assert_same_answer(json.loads(answer), json.loads(x86.stdout), text)


def ask_all(broker: Broker, prefix: str, texts: list[str]) -> list[dict[str, Any]]:
    """Every text as a request to the daemon at `prefix`, the replies in the texts' order."""
    with client(broker.port) as c:
        c.subscribe("me/replies")
        for i, text in enumerate(texts):
            c.publish(f"{prefix}/req/tiny", json.dumps({"text": text, "id": i}), "me/replies", str(i).encode())
        replies = [c.get(timeout=120, topic="me/replies").json() for _ in texts]
    return sorted(replies, key=lambda reply: int(reply["id"]))


def test_the_daemon_on_aarch64_answers_as_the_x86_agent(
    arm: ArmRoot, models: tuple[Path, Path], broker: Broker, tmp_path: Path
) -> None:
    state = {"EDGE_AGENT_STATE_DIR": arm.inside(arm.work / "state")}
    launcher = str(arm.python_launcher(tmp_path))
    on_arm = start_agent(broker, Path(arm.inside(models[1])), tmp_path, "arm64", python=launcher, env=state)
    on_x86 = start_agent(broker, models[0], tmp_path, "x86")
    try:
        answers = {name: ask_all(broker, agent.prefix, TEXTS) for name, agent in (("arm", on_arm), ("x86", on_x86))}
    finally:
        assert on_arm.stop() == 0, on_arm.log.read_text()
        assert on_x86.stop() == 0
    for text, a, b in zip(TEXTS, answers["arm"], answers["x86"], strict=True):
        assert a["source"] == b["source"] and a["version"] == b["version"], text
        assert_same_answer(a, b, text)


@pytest.mark.parametrize("cpu", [PI4, PI5])
def test_static_int8_answers_the_same_alone_and_in_a_batch_of_32_on_arm(
    arm: ArmRoot, models: tuple[Path, Path], cpu: str
) -> None:
    assert len(TEXTS) == 32
    found = json.loads(arm.python("-c", ALONE_AND_BATCH, arm.inside(arm.work / "tiny"), json.dumps(TEXTS), cpu=cpu))
    assert found["static"], "the tiny artifact must serve static int8"
    assert found["dotprod"] == (cpu == PI5), f"QEMU_CPU={cpu} was not the core emulated"
    for text, alone, inside in zip(TEXTS, found["alone"], found["batch"], strict=True):
        assert inside["label"] == alone["label"] and inside["entities"] == alone["entities"], text
        assert inside["confidence"] == pytest.approx(alone["confidence"], abs=1e-4), text
    np.testing.assert_allclose(found["batch_logits"], found["alone_logits"], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def causal(arm: ArmRoot, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """models.yaml serving a tiny GGUF classifier built here by `build-causal`'s code: (the host's, the root's)."""
    from trainer.causal.tiny import build_tiny_artifact

    built = build_tiny_artifact(tmp_path_factory.mktemp("causal") / "tiny-causal")
    shutil.copytree(built, arm.work / "tiny-causal")
    host = write_models(built.parent, [{"name": "causal", "path": str(built)}])
    (arm.work / "causal").mkdir()
    return host, write_models(arm.work / "causal", [{"name": "causal", "path": arm.inside(arm.work / "tiny-causal")}])


def test_gguf_on_aarch64_from_the_cross_built_wheel_answers_as_on_x86(arm: ArmRoot, causal: tuple[Path, Path]) -> None:
    """llama.cpp compiled for armv8-a (scripts/arm64-llama-wheel), run on an emulated Pi 4 core."""
    assert arm.python("-c", "import llama_cpp; print(llama_cpp.__version__)", venv=GGUF_VENV).strip() == "0.3.36"
    host, inside = str(causal[0]), arm.inside(causal[1])
    for text in CLASSIFIED:
        x86 = run_cli("classify", "--models", host, "--model", "causal", text)
        assert x86.returncode == 0, x86.stderr
        answer = json.loads(arm.python("-m", "edge_agent", "classify", "--models", inside, "--model", "causal", text,
                                       venv=GGUF_VENV))  # fmt: skip
        expected = json.loads(x86.stdout)
        assert_same_answer(answer, expected, text)
        near = [(t["label"], pytest.approx(t["confidence"], abs=1e-3)) for t in expected["top"]]
        assert [(t["label"], t["confidence"]) for t in answer["top"]] == near, text
