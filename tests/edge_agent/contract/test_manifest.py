from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import signing
from edge_agent.contract.manifest import SCHEMA_VERSION, Manifest, file_entry, load, version_key, write
from edge_agent.errors import ArtifactError


def artifact(tmp_path: Path, key: Ed25519PrivateKey | None = None) -> Path:
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


def test_signature_checked_when_keys_are_trusted(tmp_path: Path) -> None:
    fleet, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    folder = artifact(tmp_path, key=fleet)
    assert load(folder, [other.public_key(), fleet.public_key()]).name == "m"  # rotation: any trusted key
    with pytest.raises(ArtifactError, match=f"signed by key {signing.key_id(fleet.public_key())}, which this device"):
        load(folder, [other.public_key()])
    text = (folder / "manifest.json").read_text().replace('"version": "1"', '"version": "2"')
    (folder / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="signature does not match"):
        load(folder, [fleet.public_key()])


def test_unsigned_or_hmac_signed_artifact_is_refused_when_keys_are_trusted(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    trusted = [Ed25519PrivateKey.generate().public_key()]
    with pytest.raises(ArtifactError, match="missing signature"):
        load(folder, trusted)
    (folder / "manifest.sig").write_text("ab" * 32 + "\n")  # what the retired scheme wrote
    with pytest.raises(ArtifactError, match="retired HMAC fleet key"):
        load(folder, trusted)


def test_a_newer_manifest_format_says_upgrade(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    text = (
        (folder / "manifest.json")
        .read_text()
        .replace(f'"schema_version": {SCHEMA_VERSION}', f'"schema_version": {SCHEMA_VERSION + 1}')
    )
    (folder / "manifest.json").write_text(text.replace('"labels"', '"new_field": 1, "labels"'))
    with pytest.raises(ArtifactError, match=r"newer than this agent reads.*upgrade edge-agent"):
        load(folder)


def test_versions_order_numerically() -> None:
    assert version_key("1.10.0") > version_key("1.9.3") > version_key("1.9")
    assert version_key("20261201.101500") > version_key("20261130.235959")


def test_malformed_manifest_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"name": "m"}')
    with pytest.raises(ArtifactError, match="invalid manifest"):
        load(tmp_path)


def test_the_distance_table_must_be_a_hashed_file_of_the_artifact(tmp_path: Path) -> None:
    folder = artifact(tmp_path)
    manifest = load(folder)
    (folder / "ood.npy").write_bytes(b"\x93NUMPY")
    rule = {"file": "ood.npy", "rule": "either", "threshold": 3.0}
    with pytest.raises(ValueError, match=r"ood\.file 'ood\.npy' is not among the files"):
        Manifest.model_validate({**manifest.model_dump(), "ood": rule})
    listed = {
        **manifest.model_dump(),
        "ood": rule,
        "files": [*manifest.model_dump()["files"], file_entry(folder, "ood.npy", "ood").model_dump()],
    }
    write(folder, Manifest.model_validate(listed))
    assert load(folder).ood.max_distance == 3.0  # type: ignore[union-attr]
    (folder / "ood.npy").write_bytes(b"\x93NUMPY changed")
    with pytest.raises(ArtifactError, match=r"ood\.npy: sha256 does not match"):
        load(folder)
    assert (
        Manifest.model_validate(
            {**manifest.model_dump(), "ood": {**rule, "rule": "softmax"}, "files": listed["files"]}
        ).ood.max_distance
        is None
    )  # type: ignore[union-attr]
