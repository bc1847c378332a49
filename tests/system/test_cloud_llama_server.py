"""The cloud client against a real OpenAI-compatible server: llama-cpp-python's own, on loopback.

It serves a tiny random GGUF built here; its grammar (from `response_format`'s JSON schema) keeps
every answer in shape, so the client, the schema and the validation meet a real implementation.
The client runs on its default settings: this server refuses json_schema (a 500 naming
response_format), so `auto` must fall back to json_object + schema on its own.
Needs `llama-cpp-python[server]` (the [gguf] extra plus the server); skipped without it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from edge_agent.config.sections import CloudSettings
from edge_agent.contract.prediction import Prediction
from edge_agent.routing.cloud import CloudClient
from tests.support.broker import free_port, wait_port
from tests.support.cloud import LABELS, manifest
from tests.support.gguf import build_tiny_gguf

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")

# What llama.cpp's grammar can enforce (it bounds string lengths, not integer ranges: out-of-range
# numbers from a random model would be, rightly, rejected by the client as cloud_invalid).
FIELDS = {
    "type": "object",
    "properties": {"device": {"type": "string", "maxLength": 12}, "level": {"type": "integer"}},
    "required": ["device", "level"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--chat_format", "chatml", "--n_ctx", "1024", "--verbose", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


def ask(url: str, task: str, text: str, **kw: object) -> Prediction:
    async def go() -> Prediction:
        client = CloudClient(CloudSettings(base_url=url, model="tiny"))
        try:
            return await client.ask(manifest(task, **kw), text, time.monotonic() + 30)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_classification_answer_is_one_of_the_labels(llama_server: str) -> None:
    for text in ("turn on the lights", "is it going to rain"):
        pred = ask(llama_server, "classify", text)
        assert pred.label in LABELS and pred.fields is None


def test_extraction_answer_validates_against_the_fields_schema(llama_server: str) -> None:
    pred = ask(llama_server, "extract", "dim the lamp to forty percent", fields_schema=FIELDS)
    assert pred.fields is not None and set(pred.fields) == {"device", "level"}
    assert isinstance(pred.fields["level"], int) and len(pred.fields["device"]) <= 12


def test_classify_extract_answer_has_label_and_grounded_entities(llama_server: str) -> None:
    text = "lights on in the kitchen"
    pred = ask(llama_server, "classify+extract", text, entity_types=["house_place"])
    assert pred.label in LABELS
    assert all(text[e.start : e.end] == e.value and e.type == "house_place" for e in pred.entities)
