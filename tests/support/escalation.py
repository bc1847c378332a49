"""The handler with the router in the loop, for tests: a scripted local model (its confidence the text
decides), the real cloud client, spool, waitlist and feedback files."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config.models_file import ModelsFile
from edge_agent.config.sections import CloudSettings
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest, file_entry, write
from edge_agent.contract.messages import Inbound
from edge_agent.contract.prediction import Prediction
from edge_agent.routing.cloud import CloudClient
from edge_agent.routing.router import Router
from edge_agent.runtimes.pool import ModelPool
from edge_agent.serving.handler import Handler
from edge_agent.serving.waitlist import Waitlist
from edge_agent.transport.outcome import Reply
from edge_agent.transport.spool import Spool

LABELS = ["lights_on", "lights_off", "weather"]


class Scripted:
    """A local model whose answer the text decides: 'sure' 0.95, 'unsure' 0.3, 'broken' an unknown label."""

    def __init__(self, manifest: Manifest, gate: threading.Event) -> None:
        self.manifest = manifest
        self.gate = gate

    def check_input(self, text: str) -> None:
        pass

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        out = []
        for text in texts:
            if "slow" in text:
                self.gate.wait(10)
            confidence = 0.3 if "unsure" in text else 0.95
            label = "no_such_label" if "broken" in text else "lights_on"
            out.append(Prediction(label, confidence, [(label, confidence)]))
        return out

    def close(self) -> None:
        pass


def artifact(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"stand-in")
    m = Manifest(
        name="m", version="7", task="classify", runtime="onnx", files=[file_entry(folder, "model.onnx", "model")]
    )
    m.labels = LABELS
    m.thresholds.escalate = 0.5
    write(folder, m)
    return folder


@dataclass
class Rig:
    handler: Handler
    router: Router
    spool: Spool
    waitlist: Waitlist
    settings: AgentSettings
    gate: threading.Event

    async def ask(self, text: str, model: str = "m", **fields: Any) -> dict[str, Any]:
        out = await self.handler.handle(self.inbound(text, model, **fields))
        assert isinstance(out, Reply), out
        return dict(json.loads(out.out.payload))

    def inbound(self, text: str, model: str = "m", **fields: Any) -> Inbound:
        payload = json.dumps({"text": text, "id": text, **fields}).encode()
        return Inbound(f"edge-agent/d/req/{model}", payload, "me/r")


@contextmanager
def rig_env(
    tmp_path: Path, cloud_url: str | None, entry: dict[str, Any] | None = None, **cloud_kw: Any
) -> Iterator[Any]:
    folder = artifact(tmp_path / "art")
    models = ModelsFile.model_validate({"models": [{"name": "m", "path": str(folder), **(entry or {})}]})
    cloud = None
    if cloud_url:
        kw = {"retries": 0, "backoff_s": 0.01, "breaker_failures": 2, "breaker_cooldown_s": 60, **cloud_kw}
        cloud = CloudSettings(base_url=cloud_url, model="teacher", **kw)
    settings = AgentSettings(
        device_id="d", models_file=tmp_path / "models.yaml", state_dir=tmp_path / "state", cloud=cloud
    )
    gate = threading.Event()

    def start(missing: dict[str, Any] | None = None) -> Rig:
        pool = ModelPool.load(models, 1, 4, loader=lambda f, m, t: Scripted(m, gate))
        pool.start()
        router = Router(settings, models, CloudClient(cloud) if cloud else None)
        spool = Spool(settings.state_dir / "spool.sqlite")
        waitlist = Waitlist(spool, cloud)
        handler = Handler(settings, models, pool, router, waitlist, missing)
        return Rig(handler, router, spool, waitlist, settings, gate)

    yield start
    gate.set()


def run(
    tmp_path: Path,
    cloud_url: str | None,
    body: Callable[[Rig], Awaitable[None]],
    entry: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    with rig_env(tmp_path, cloud_url, entry, **kw) as start:

        async def go() -> None:
            rig = start()
            try:
                await body(rig)
            finally:
                rig.gate.set()
                await rig.router.drain()
                await rig.handler.pool.stop()

        asyncio.run(go())
