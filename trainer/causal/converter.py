"""llama.cpp's own HF -> GGUF converter, pinned: taken from one exact llama-cpp-python sdist.

The converter only works with the `gguf-py` it ships with (PyPI's `gguf` lags behind it), and it
must write what the installed llama.cpp (quantizer, runtime) reads. So the converter, `conversion/`
and `gguf-py/` come out of the sdist of the installed llama-cpp-python version, checked against a
pinned sha256, into a cache folder, once. An upgrade of llama-cpp-python fails here, loudly, until
the pin below is moved with it.

Offline build boxes: set EDGE_TRAINER_LLAMA_CPP_SDIST to a copy of that sdist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edge_agent.contract.manifest import sha256_file
from trainer.errors import TrainerError

VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
DONE = ".complete"


def cache_root() -> Path:
    base = os.environ.get("EDGE_TRAINER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge-trainer"
    )
    return Path(base)


def ensure(cache: Path | None = None) -> Path:
    """The folder holding convert_hf_to_gguf.py and its own gguf-py; fetched and checked on first use."""
    _check_installed()
    folder = (cache or cache_root()) / f"llama-cpp-python-{VERSION}"
    if (folder / DONE).is_file():
        return folder
    sdist = _sdist(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=".converter-", dir=folder.parent))
    _extract(sdist, staging)
    (staging / DONE).write_text(SDIST_SHA256 + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _check_installed() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("llama_cpp_python")
    except PackageNotFoundError:
        raise TrainerError("GGUF export needs llama-cpp-python (the [gguf] extra) for its quantizer") from None
    if installed != VERSION:
        raise TrainerError(
            f"llama-cpp-python {installed} is installed but the GGUF converter is pinned to {VERSION}: "
            "install that version, or move VERSION and SDIST_SHA256 in trainer/causal/converter.py together"
        )


def _sdist(root: Path) -> Path:
    """The sdist, from EDGE_TRAINER_LLAMA_CPP_SDIST or `pip download`, verified against the pin."""
    given = os.environ.get("EDGE_TRAINER_LLAMA_CPP_SDIST")
    path = Path(given) if given else root / "sdist" / SDIST
    if not path.is_file() and not given:
        _download(path.parent)
    if not path.is_file():
        raise TrainerError(f"{path}: no llama-cpp-python {VERSION} sdist there")
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise TrainerError(f"{path}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    return path


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [f"llama-cpp-python=={VERSION}", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise TrainerError(f"cannot download the llama-cpp-python {VERSION} sdist: {' '.join(tail)}")


def _extract(sdist: Path, into: Path) -> None:
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and name.startswith(MEMBERS) and (member.isfile() or member.isdir()):
                member.name = name
                tar.extract(member, into, filter="data")


def convert(merged: Path, out: Path, outtype: str, cache: Path | None = None, extra: list[str] | None = None) -> Path:
    """Run the pinned converter on a Hugging Face folder; its own gguf-py comes first on the path."""
    folder = ensure(cache)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    cmd = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(merged), "--outfile", str(out)]
    done = subprocess.run([*cmd, "--outtype", outtype, *(extra or [])], capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        last = lines[-1].strip() if lines else str(done.returncode)
        if ":" not in last and len(lines) > 2:  # a bare AssertionError: say which check failed
            last = f"{last} at `{lines[-3].strip()}`"
        raise TrainerError(f"convert_hf_to_gguf failed on {merged}: {last}")
    return out


def check_vocab(base: Path, cache: Path | None = None) -> None:
    """Fail before any training when llama.cpp's converter cannot take the base's tokenizer (it knows
    byte-level BPE tokenizers by the hash of their output: a model it does not know stops the export
    otherwise, after the fine-tune). Writes only the vocabulary, in a few seconds."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vocab-check-") as tmp:
        try:
            convert(base, Path(tmp) / "vocab.gguf", "f32", cache, ["--vocab-only"])
        except TrainerError as exc:
            raise TrainerError(f"{exc} (vocabulary check before training: nothing was trained)") from None


TENSOR_TYPES = """
import collections, json, sys
from gguf import GGUFReader
counts, params = collections.Counter(), collections.Counter()
for t in GGUFReader(sys.argv[1]).tensors:
    counts[t.tensor_type.name] += 1
    params[t.tensor_type.name] += int(t.n_elements)
print(json.dumps({k: {"tensors": counts[k], "parameters": params[k]} for k in sorted(counts)}))
"""


def tensor_types(path: Path, cache: Path | None = None) -> dict[str, dict[str, int]]:
    """The real type mix of a GGUF (Q4_K_M falls back to other types where widths do not fit)."""
    import json

    folder = ensure(cache)
    env = {**os.environ, "PYTHONPATH": str(folder / "gguf-py")}
    done = subprocess.run([sys.executable, "-c", TENSOR_TYPES, str(path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise TrainerError(f"{path}: cannot read its tensors: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, dict[str, int]] = json.loads(done.stdout)
    return result
