"""The Node-RED example (examples/node-red/edge-agent.json) in a real Node-RED 4 against a real agent.

Node-RED loads the example as users import it (only its broker node points at the test's mosquitto) plus a
test tab that wires the example's subflows to HTTP endpoints and MQTT test topics.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import Agent, start_agent, write_models
from tests.support.broker import Broker, client, make_broker
from tests.support.node_red import EXAMPLE, NodeRed, example_flows, node_red, node_red_js

TAB = "7e57000000000001"
ASK, NOBODY, ROUTE = "7e57000000000a01", "7e57000000000a02", "7e57000000000b01"
ROUTED_PORTS = {"lights_on": 1, "lights_off": 2}  # the test's router instance: LABEL_1, LABEL_2; else port 4


@dataclass
class Setup:
    broker: Broker
    agent: Agent
    red: NodeRed


def by_type(flows: list[dict[str, Any]], kind: str, name: str | None = None) -> str:
    """The id of the example's one node of `kind` (and `name`)."""
    (found,) = [n["id"] for n in flows if n["type"] == kind and name in (None, n.get("name"))]
    return str(found)


def node(kind: str, nid: str, wires: list[list[str]] | None = None, **props: Any) -> dict[str, Any]:
    return {"id": nid, "type": kind, "z": TAB, "x": 100, "y": 100, "wires": wires or [], **props}


def instance(subflow: str, nid: str, wires: list[list[str]], **env: str) -> dict[str, Any]:
    """A subflow instance as the editor saves it: the broker a config reference, numbers as num."""
    entries = [
        {"name": k, "type": "conf-type" if k == "BROKER" else "num" if k == "TIMEOUT_S" else "str", "value": v}
        for k, v in env.items()
    ]
    return node(f"subflow:{subflow}", nid, wires, env=entries)


def ask_endpoint(url: str, nid: str, ask: str, broker: str, **env: str) -> list[dict[str, Any]]:
    """POST url -> "ask edge-agent" -> the reply as the HTTP answer, or 504 from its timeout port."""
    ok, late, timeout = f"{nid}-ok", f"{nid}-504", f"{nid}-to"
    set_504 = [
        {"t": "set", "p": "statusCode", "pt": "msg", "to": "504", "tot": "num"},
        {"t": "set", "p": "payload", "pt": "msg", "to": '{"timeout": true}', "tot": "json"},
    ]
    return [
        node("http in", f"{nid}-in", [[nid]], url=url, method="post", upload=False, swaggerDoc=""),
        instance(ask, nid, [[ok], [timeout]], BROKER=broker, **env),
        node("http response", ok, statusCode="", headers={}),
        node("change", timeout, [[late]], rules=set_504),
        node("http response", late, statusCode="", headers={}),
    ]


def routed(route: str, broker: str) -> list[dict[str, Any]]:
    """The router's 4 ports -> test/routed/<port>."""
    ports = [f"{ROUTE}-{port}" for port in range(1, 5)]
    tags = [
        node(
            "change",
            nid,
            [[f"{ROUTE}-out"]],
            rules=[{"t": "set", "p": "topic", "pt": "msg", "to": f"test/routed/{i}", "tot": "str"}],
        )
        for i, nid in enumerate(ports, start=1)
    ]
    labels = {f"LABEL_{port}": label for label, port in ROUTED_PORTS.items()}
    return [
        instance(route, ROUTE, [[nid] for nid in ports], BROKER=broker, RESULTS="results/sensors/#", **labels),
        *tags,
        node("mqtt out", f"{ROUTE}-out", broker=broker, topic="", qos="1", retain="false"),
    ]


def ping(broker: str) -> list[dict[str, Any]]:
    """test/ping -> test/pong, created last: Node-RED subscribes in creation order on one connection, so a
    pong for a retained ping means every subscription of the instances above is in place at the broker."""
    return [
        node(
            "mqtt in",
            "7e57000000000f01",
            [["7e57000000000f02"]],
            broker=broker,
            topic="test/ping",
            qos="1",
            datatype="utf8",
            inputs=0,
        ),
        node("mqtt out", "7e57000000000f02", broker=broker, topic="test/pong", qos="1", retain="false"),
    ]


def flows_under_test(broker_port: int) -> list[dict[str, Any]]:
    flows = example_flows(broker_port)
    ask, route = by_type(flows, "subflow", "ask edge-agent"), by_type(flows, "subflow", "edge-agent results by label")
    broker = by_type(flows, "mqtt-broker")
    tab = {"id": TAB, "type": "tab", "label": "tests"}
    agent = {"PREFIX": "edge-agent/dev1", "MODEL": "tiny", "TIMEOUT_S": "20"}
    nobody = {"PREFIX": "edge-agent/nobody", "MODEL": "tiny", "TIMEOUT_S": "1"}
    endpoints = [
        *ask_endpoint("/ask", ASK, ask, broker, **agent),
        *ask_endpoint("/nobody", NOBODY, ask, broker, **nobody),
    ]
    return [*flows, tab, *endpoints, *routed(route, broker), *ping(broker)]


def wait_ready(broker: Broker, red: NodeRed) -> None:
    with client(broker.port) as c:
        c.subscribe("test/pong")
        c.client.publish("test/ping", "ping", qos=1, retain=True).wait_for_publish(10)
        try:
            c.get(timeout=60, topic="test/pong")
        except TimeoutError:
            raise AssertionError(f"Node-RED's flows never answered a ping:\n{red.log.read_text()}") from None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: Path) -> Iterator[Setup]:
    node_red_js()  # skips (fails under CI) before anything is started
    tmp = tmp_path_factory.mktemp("node-red")
    binding = {"topic": "sensors/+/log", "model": "tiny", "output": "results/{topic}"}
    models = write_models(tmp, [{"name": "tiny", "path": str(tiny_artifact)}], [binding])
    with contextlib.ExitStack() as stack:
        broker = make_broker(tmp)
        broker.start()
        stack.callback(broker.stop)
        agent = start_agent(broker, models, tmp)
        stack.callback(agent.stop)
        red = stack.enter_context(node_red(tmp / "node-red", flows_under_test(broker.port)))
        wait_ready(broker, red)
        yield Setup(broker, agent, red)


def direct_label(setup: Setup, text: str) -> str:
    """The label the agent gives a text when asked directly (what the flow's answer must say)."""
    with client(setup.broker.port) as c:
        c.subscribe("direct/replies")
        c.publish(f"{setup.agent.prefix}/req/tiny", json.dumps({"text": text}), "direct/replies", b"direct")
        return str(c.get(topic="direct/replies").json()["label"])


def test_node_red_runs_the_example_unchanged(setup: Setup) -> None:
    deployed = {n["id"]: n for n in setup.red.get("/flows")}
    example = [n for n in json.loads(EXAMPLE.read_text()) if n["type"] != "mqtt-broker"]
    assert example and all(deployed[n["id"]] == n for n in example)


def ask_together(setup: Setup, texts: list[str]) -> list[tuple[int, Any]]:
    """POST every text to /ask while the agent is stopped (SIGSTOP), so that all are in flight at once and each
    reply must find its own message among the others; the agent goes on once all requests are at the broker."""
    topic = f"{setup.agent.prefix}/req/tiny"
    with client(setup.broker.port) as watch, ThreadPoolExecutor(len(texts)) as pool:
        watch.subscribe(topic)
        setup.agent.proc.send_signal(signal.SIGSTOP)
        try:
            asked = [pool.submit(setup.red.post, "/ask", {"text": t, "id": f"q{i}"}) for i, t in enumerate(texts)]
            for _ in texts:
                watch.get(topic=topic)
        finally:
            setup.agent.proc.send_signal(signal.SIGCONT)
        return [future.result() for future in asked]


def test_text_in_reply_out_with_the_agents_label(setup: Setup) -> None:
    texts = ["turn on the lights in the kitchen", "switch the hall lights off", "will it rain today"] * 2
    labels = [direct_label(setup, text) for text in texts]
    for i, (status, body) in enumerate(ask_together(setup, texts)):
        assert status == 200, body
        assert (body["id"], body["model"], body["label"]) == (f"q{i}", "tiny", labels[i])
    status, body = setup.red.post("/ask", "will it rain today")  # a plain string is the text
    assert status == 200 and body["label"] == direct_label(setup, "will it rain today")


def test_error_replies_come_out_of_the_reply_port(setup: Setup) -> None:
    status, body = setup.red.post("/ask", {"text": ""})
    assert status == 200 and body["error"]["code"] == "bad_request"


def test_timeout_port_when_no_agent_answers(setup: Setup) -> None:
    request_topic = "edge-agent/nobody/req/tiny"
    with client(setup.broker.port) as c:
        c.subscribe(request_topic)
        start = time.monotonic()
        status, body = setup.red.post("/nobody", {"text": "lights on"})
        took = time.monotonic() - start
        request = c.get(topic=request_topic)
    assert (status, body) == (504, {"timeout": True})
    assert 1.0 <= took < 10.0  # the instance's TIMEOUT_S is 1
    assert request.json() == {"text": "lights on"} and request.correlation
    assert request.response_topic == f"clients/node-red/replies/{NOBODY}"  # REPLY_BASE/<instance id>


def test_sensor_results_leave_by_their_label(setup: Setup) -> None:
    texts = ["turn on the lights in the kitchen", "switch the hall lights off", "will it rain today"]
    seen = set()
    with client(setup.broker.port) as c:
        c.subscribe("test/routed/#")
        for i, text in enumerate(texts):
            label = direct_label(setup, text)
            c.publish(f"sensors/s{i}/log", text)
            msg = c.get()
            assert msg.topic == f"test/routed/{ROUTED_PORTS.get(label, 4)}"
            assert (msg.json()["topic"], msg.json()["label"]) == (f"sensors/s{i}/log", label)
            seen.add(msg.topic)
    assert len(seen) >= 2, f"the tiny model gave these texts one label: {seen}"
