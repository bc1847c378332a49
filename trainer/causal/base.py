"""Stage `causal-import`: a GGUF file as the base, turned into the plain Hugging Face folder the stages read.

Users of Ollama and LM Studio hold GGUF files, not HF folders. transformers' GGUF loader reads the
file (weights dequantized to fp32, tokenizer and chat template from its metadata); the model it
returns refuses `save_pretrained`, so its weights go into a plain model made from the same config.
The base was quantized before anyone trains on it: its sha256, quantization and tensor-type mix are
recorded here and travel to the manifest (`base`), so the artifact says what it was made from.

Output folder: `config.json`, `model.safetensors`, the tokenizer files, `stage.json`. Importing the
same file again into the same folder is a no-op (checked by sha256).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.contract.manifest import sha256_file
from trainer import stage
from trainer.errors import UsageError

STAGE = "causal-import"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gguf_file(base: Path) -> Path | None:
    """The GGUF file `base` names: the file itself, or the only one in a folder with no config.json."""
    if base.is_file():
        if base.suffix != ".gguf":
            raise UsageError(f"--base {base}: a file base must be a .gguf file")
        return base
    if not base.is_dir():
        raise UsageError(f"--base {base}: no such file or folder")
    if (base / "config.json").is_file():
        return None
    found = sorted(base.glob("*.gguf"))
    if len(found) != 1:
        what = "no config.json and no .gguf file" if not found else f"{len(found)} .gguf files (name one)"
        raise UsageError(f"--base {base}: {what}")
    return found[0]


def resolve(base: Path, work: Path) -> Path:
    """The HF folder to train from: `base` itself, or its GGUF imported into `work` (once)."""
    source = gguf_file(base)
    return base if source is None else run(source, work)


def source_of(folder: Path) -> dict[str, Any] | None:
    """What an imported base was made from (its import's results), None for a plain HF folder."""
    try:
        results: dict[str, Any] = stage.read(folder, STAGE)["results"]
        return results
    except UsageError:
        return None


def run(source: Path, out: Path) -> Path:
    digest = sha256_file(source)
    done = source_of(out)
    if done is not None and done.get("sha256") == digest:
        return out
    info = describe(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _convert(source, staging)
        results = {"file": source.name, "sha256": digest, "size": source.stat().st_size, **info}
        stage.write(staging, STAGE, {}, {"gguf": source}, results)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def describe(source: Path) -> dict[str, Any]:
    """Name, architecture, quantization (llama.cpp's file type) and the tensor-type mix, from the header."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(source)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--base {source}: not a GGUF file llama.cpp's reader accepts: {exc}") from None

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    kind = value("general.file_type")
    mix = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "name": value("general.name"),
        "architecture": value("general.architecture"),
        "quantization": LlamaFileType(kind).name.removeprefix("MOSTLY_") if kind is not None else None,
        "tensor_types": dict(mix.most_common()),
        "vocab_size": len(value("tokenizer.ggml.tokens") or []),
    }


def _convert(source: Path, out: Path) -> None:
    import transformers

    folder, name = source.parent, source.name
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--base {source}: transformers cannot import it: {first}") from None
    plain = transformers.AutoModelForCausalLM.from_config(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # the folder holds plain fp32 weights
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _check_tokenizer(source, out, int(loaded.config.vocab_size))


PROBES = (
    "turn on the lights in the kitchen",
    "Wake me up at 7:30 AM, please!",
    "two  spaces inside, a\ttab and a\nnew line",
    "what's the weather in São Paulo? 23°C",
    "order 12345 items for 9.99 $ each",
    "déjà vu: naïve café, straße, 東京 🙂",
)


def _check_tokenizer(source: Path, out: Path, embedded: int) -> None:
    """The tokenizer as the stages will load it from `out` must cut text as llama.cpp cuts it with the
    GGUF's own vocabulary: transformers' GGUF conversion and its save/load round trip can each change a
    pre-tokenizer silently (seen with a tiny Qwen2), and a model fed other ids than it was trained on
    only looks broken much later."""
    import llama_cpp
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    if not embedded // 2 <= len(tokenizer) <= embedded:  # a silently tiny vocabulary is a known failure
        raise UsageError(f"--base {source}: imported tokenizer has {len(tokenizer)} tokens, the model {embedded}")
    vocab = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)
    try:
        for text in PROBES:
            ours = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
            theirs = vocab.tokenize(text.encode(), add_bos=False, special=False)
            if ours != theirs:
                raise UsageError(
                    f"--base {source}: the imported tokenizer cuts {text!r} into other tokens than llama.cpp does "
                    f"with the file's vocabulary ({ours[:8]} vs {theirs[:8]}): import it from its Hugging Face folder"
                )
    finally:
        vocab.close()
