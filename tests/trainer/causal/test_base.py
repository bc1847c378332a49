"""A GGUF file as the base: imported into the HF folder the stages train, with where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("llama_cpp", reason="the [gguf] extra (llama-cpp-python) is not installed")

from edge_agent.contract.manifest import sha256_file
from trainer import cli as trainer_cli
from trainer.causal import base, converter, data
from trainer.causal.tiny import corpus, make_base
from trainer.errors import EX_USAGE, UsageError
from trainer.records import write_builtin


def _tiny(root: Path, arch: str) -> tuple[Path, Path]:
    """A tiny base and the f32 GGUF llama.cpp's converter makes of it."""
    folder = make_base(root / "hf", corpus(write_builtin(root / "train.jsonl")), arch)
    (root / "ollama").mkdir()
    return folder, converter.convert(folder, root / "ollama" / "tiny.gguf", "f32")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _tiny(tmp_path_factory.mktemp("import"), "llama")


def test_a_tokenizer_that_changes_on_import_is_refused(tmp_path: Path) -> None:
    """transformers imports this tiny Qwen2's tokenizer (a SentencePiece one) as a byte-level BPE whose
    save/load round trip cuts text differently from llama.cpp: training on it would feed the model other
    ids than it was made with."""
    _, gguf = _tiny(tmp_path, "qwen2")
    with pytest.raises(UsageError, match=r"other tokens than llama\.cpp"):
        base.resolve(gguf, tmp_path / "base")
    assert not (tmp_path / "base").exists()  # nothing half-imported is left to be trained on


def test_a_gguf_file_comes_back_as_the_same_model(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    folder, gguf = tiny_gguf
    out = base.resolve(gguf.parent, tmp_path / "base")  # a folder holding one GGUF, as Ollama keeps them
    assert out == tmp_path / "base"
    original, imported = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    name = next(k for k in original if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert (original[name].float() - imported[name]).abs().max() < 1e-6  # f32 in, f32 out
    tokenizer = data.load_tokenizer(out)
    assert tokenizer("turn on the lights").input_ids == data.load_tokenizer(folder)("turn on the lights").input_ids
    source = base.source_of(out)
    assert source is not None and source["sha256"] == sha256_file(gguf) and source["quantization"] == "ALL_F32"
    assert source["file"] == "tiny.gguf" and source["tensor_types"]["F32"] > 0
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert base.resolve(gguf, tmp_path / "base") == out and (out / "model.safetensors").stat().st_mtime_ns == before


def test_an_hf_folder_is_used_as_it_is(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = tiny_gguf
    assert base.resolve(folder, tmp_path / "unused") == folder and not (tmp_path / "unused").exists()
    assert base.source_of(folder) is None


def test_what_cannot_be_a_base_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF but not really")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"")
    for bad, says in (
        (tmp_path / "notes.txt", "must be a .gguf file"),
        (tmp_path / "missing", "no such file or folder"),
        (two, "2 .gguf files"),
        (tmp_path / "broken.gguf", "not a GGUF file"),
    ):
        with pytest.raises(UsageError, match=says):
            base.resolve(bad, tmp_path / "out")
    assert trainer_cli.main(["causal-import", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == EX_USAGE
    assert capsys.readouterr().err.count("\n") == 1  # one readable line
