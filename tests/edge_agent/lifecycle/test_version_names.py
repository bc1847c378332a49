"""A version is a name, never a path (issue 23): `.`, `..`, `a/b` or 10,000 characters are refused in one line
wherever a version comes in, and nothing on disk is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.contract import manifest as mf
from edge_agent.errors import ArtifactError, BadRequest
from edge_agent.lifecycle.registry import FolderSource, latest
from edge_agent.lifecycle.store import Store
from edge_agent.serving import commands

BAD = [".", "..", "../other", "a/b", "", "-rc1", ".hidden", "x" * 65, "1.0\n", "v 1", "1.0/../.."]
GOOD = ["1", "2.0.0", "20261206.134724", "1.2.3-rc.1+b7", "v2_final"]


@pytest.mark.parametrize("version", BAD)
def test_a_bad_version_is_refused_everywhere_in_one_line(version: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"not a version \(1 to 64 letters"):
        mf.check_version(version)
    with pytest.raises(BadRequest, match=r"field 'version' must be a version"):
        commands.validate({"model": "m", "version": version})
    with pytest.raises(ValidationError):
        mf.Manifest(name="m", version=version, task="classify", runtime="onnx", files=[], labels=["a"])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "latest.json").write_text(json.dumps({"version": version}))
    with pytest.raises(ArtifactError) as caught:
        latest(FolderSource(tmp_path), "m")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("version", GOOD)
def test_versions_people_use_are_names(version: str) -> None:
    assert mf.check_version(version) == version
    assert commands.validate({"model": "m", "version": version}) == ("m", version)


@pytest.mark.parametrize("version", [".", "..", "../m"])
def test_the_store_never_turns_a_bad_version_into_a_path(version: str, tmp_path: Path) -> None:
    """Before: `models rollback --version .` removed the model's whole store folder, `..` every model's."""
    store = Store(tmp_path)
    serving = store.folder("m") / "1"
    serving.mkdir(parents=True)
    (serving / "model.onnx").write_bytes(b"weights")
    (store.folder("other") / "2").mkdir(parents=True)
    for act in (
        lambda: store.refuse("m", version, "bad"),
        lambda: store.rollback("m", "by hand", version),
        lambda: store.version_folder("m", version),
    ):
        with pytest.raises(ArtifactError, match="not a version"):
            act()
    assert (serving / "model.onnx").read_bytes() == b"weights" and (store.folder("other") / "2").is_dir()
