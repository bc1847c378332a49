from pathlib import Path

import pytest

from edge_agent.errors import ArtifactError
from edge_agent.manifest import Manifest, file_entry, load, write


def artifact(tmp_path: Path, key: bytes | None = None) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"weights")
    (tmp_path / "tokenizer.json").write_text("{}")
    files = [file_entry(tmp_path, "model.onnx", "model"), file_entry(tmp_path, "tokenizer.json", "tokenizer")]
    m = Manifest(name="m", version="1", task="classify", runtime="onnx", files=files, labels=["a", "b"])
    write(tmp_path, m, key)
    return tmp_path


def test_intact_artifact_loads(tmp_path: Path) -> None:
    assert load(artifact(tmp_path)).labels == ["a", "b"]


def test_corrupted_file_is_refused_naming_it(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    (folder / "model.onnx").write_bytes(b"weightz")
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        load(folder)


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: missing"):
        load(folder)


def test_signature_checked_when_key_set(tmp_path: Path) -> None:
    folder = artifact(tmp_path, key=b"fleet-key")
    assert load(folder, b"fleet-key").name == "m"
    with pytest.raises(ArtifactError, match="signature does not match"):
        load(folder, b"other-key")
    text = (folder / "manifest.json").read_text().replace('"version": "1"', '"version": "2"')
    (folder / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="signature does not match"):
        load(folder, b"fleet-key")


def test_malformed_manifest_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"name": "m"}')
    with pytest.raises(ArtifactError, match="invalid manifest"):
        load(tmp_path)
