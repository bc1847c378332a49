"""The store's decisions are taken under its lock, on what serves now (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.registry import FolderSource, latest
from edge_agent.lifecycle.store import Current, Store


def folder(store: Store, version: str) -> Path:
    path = store.version_folder("m", version)
    path.mkdir(parents=True)
    return path


def test_a_pull_that_read_an_old_current_cannot_downgrade_what_another_promoted(tmp_path: Path) -> None:
    """Before: a CLI pull installed 3.0.0, a concurrent MQTT pull (which had read 1.0.0 as current before the lock)
    then promoted 2.0.0 over it, and state.json held two `serving` records."""
    store, seed = Store(tmp_path), Current("1.0.0", tmp_path / "seed")
    store.promote("m", "3.0.0", folder(store, "3.0.0"), seed)
    with pytest.raises(ArtifactError, match=r"2.0.0 is older than 3.0.0, which serves \(a downgrade\)"):
        store.promote("m", "2.0.0", folder(store, "2.0.0"), seed)  # `seed`: what it read before 3.0.0 came
    state = store.state("m")
    assert state.serving == "3.0.0" and [v for v, r in state.versions.items() if r.state == "serving"] == ["3.0.0"]
    store.promote("m", "2.0.0", store.version_folder("m", "2.0.0"), seed, allow_older=True)  # on purpose: allowed
    state = store.state("m")
    assert (state.serving, state.previous) == ("2.0.0", "3.0.0")
    assert [v for v, r in state.versions.items() if r.state == "serving"] == ["2.0.0"]


def test_a_latest_json_nested_past_pythons_limit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "latest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match=r"^registry: m/latest.json has no version$"):
        latest(FolderSource(tmp_path), "m")
