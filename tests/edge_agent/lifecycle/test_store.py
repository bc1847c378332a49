"""The store's decisions are taken under its lock, on what serves now (issue 23)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from edge_agent.contract import signing
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.recovery import recover, sweep
from edge_agent.lifecycle.registry import FolderSource, latest
from edge_agent.lifecycle.store import Current, Store
from tests.support.registry import make_keys, publish


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


class BlockingSource:
    """A registry folder whose file downloads wait for the test: the download is in progress as long as it likes."""

    def __init__(self, root: Path) -> None:
        self.inner, self.started, self.go = FolderSource(root), threading.Event(), threading.Event()

    def read(self, relpath: str, limit: int = 1 << 20) -> bytes:
        return self.inner.read(relpath, limit)

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        self.started.set()
        assert self.go.wait(30)
        self.inner.fetch(relpath, dest, size, sha256)


def test_no_lock_is_held_across_a_download(tmp_path: Path, tiny_artifact: Path) -> None:
    """Before: `models pull` held the model's lock for its whole download; the agent, taking that lock on its
    event loop for a rollback, held every request (one answered after 23 s)."""
    keys = make_keys(tmp_path / "keys")
    publish(tmp_path / "registry", tiny_artifact, "2.0.0", keys)
    store, source = Store(tmp_path / "state"), BlockingSource(tmp_path / "registry")
    trusted = [signing.load_public(keys.public)]
    pulled: list[Path] = []
    worker = threading.Thread(target=lambda: pulled.append(store.pull("tiny", source, trusted, "2.0.0", None)))
    worker.start()
    assert source.started.wait(30)
    with store.lock("tiny"):  # free while the download runs
        pass
    source.go.set()
    worker.join(30)
    assert pulled and (pulled[0] / "manifest.json").is_file() and not list(store.folder("tiny").glob(".incoming-*"))


def test_what_a_killed_pull_left_is_swept_and_a_running_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    left = store.folder("m") / f".incoming-2.0.0.{dead.pid}"
    running = store.folder("m") / f".incoming-3.0.0.{alive.pid}"
    ours = store.folder("m") / f".incoming-4.0.0.{os.getpid()}"  # a pid before a reboot, now ours: not a pull
    for folder in (left, running, ours):
        folder.mkdir(parents=True)
    try:
        sweep(store, "m")
    finally:
        alive.kill()
        alive.wait()
    assert not left.exists() and running.is_dir() and not ours.exists()


def test_start_up_hashes_a_stored_version_once(
    tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the store's check and then the pool's load each hashed every file (twice the start on a big model)."""
    from edge_agent.config.models_file import ModelEntry, ModelsFile
    from edge_agent.contract import manifest as mf
    from edge_agent.runtimes.pool import ModelPool

    store = Store(tmp_path)
    path = store.adopt("m", "1.0.0", tiny_artifact)
    store.promote("m", "1.0.0", path, None)
    hashed: list[Path] = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p: hashed.append(p) or real(p))
    models, verified = recover(store, ModelsFile(models=[ModelEntry(name="m")]), ())
    pool = ModelPool.load_what_verifies(models, 1, 1, (), verified=verified)
    pool.close()
    assert "m" in pool.served and len(hashed) == len(mf.read(path).files) == len(set(hashed))
