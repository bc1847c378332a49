"""`edge-trainer fleet-report`: every device's trial of a candidate, read from the broker, and one decision.

Each agent publishes its status retained on its status topic (`edge-agent/{device_id}/status` by default,
`{prefix}/agents/{device_id}/status` in a shared group), with the trial of
each model's candidate (counts, figures, rule, its own decision). Counts add up across devices, so a
fleet of small devices reaches the rule's `min_escalated` together; latency is judged by the worst
device (a p99 does not add). The decision is `edge_agent.lifecycle.trial.decide`, the function each device uses.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config.models_file import PromotionRule
from edge_agent.contract.manifest import version_key
from edge_agent.lifecycle.trial import Counts, Verdict, decide
from trainer.errors import TrainerError

EX_UNAVAILABLE = 69


@dataclass(frozen=True)
class DeviceTrial:
    device: str
    version: str
    counts: Counts
    p99_ms: tuple[float | None, float | None]
    rule: PromotionRule
    decision: str | None


def gather(host: str, port: int, statuses: str, model: str, timeout_s: float = 10.0) -> list[DeviceTrial]:
    """The retained statuses matching the filter `statuses` that carry a trial of `model`. The broker
    sends a subscription's retained messages before anything published after it, so a marker published
    once subscribed, and received back, says every retained status has arrived."""
    import paho.mqtt.client as mqtt

    found: dict[str, DeviceTrial] = {}
    done = threading.Event()
    marker = f"edge-trainer/fleet-report/{uuid.uuid4().hex}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *_: c.subscribe([(statuses, 1), (marker, 1)])
    client.on_subscribe = lambda c, *_: c.publish(marker, b"", qos=1)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == marker:
            done.set()
            return
        trial = parse(msg.topic, msg.payload, model)
        if trial is not None:
            found[trial.device] = trial

    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise FleetError(f"broker {host}:{port}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout=timeout_s):
            raise FleetError(f"broker {host}:{port}: the statuses did not arrive within {timeout_s:g} s")
    finally:
        client.loop_stop()
        client.disconnect()
    return [found[d] for d in sorted(found)]


class FleetError(TrainerError):
    exit_code = EX_UNAVAILABLE


def parse(topic: str, payload: bytes, model: str) -> DeviceTrial | None:
    """One device's trial of `model` from its status message; None when it has none (or is not JSON)."""
    try:
        body = json.loads(payload)
        trial = body["rollout"][model]["candidate"]
        counts = Counts(**trial["counts"])
        figures = trial["figures"]
        rule = PromotionRule(**trial["rule"])
    except (ValueError, KeyError, TypeError):
        return None
    device = str(body.get("device_id") or topic.split("/")[-2])
    p99 = (figures.get("serving_p99_ms"), figures.get("candidate_p99_ms"))
    return DeviceTrial(device, str(trial["version"]), counts, p99, rule, trial.get("decision"))


def judge(trials: list[DeviceTrial], rule: PromotionRule | None = None) -> Verdict:
    """The fleet's decision on the newest candidate version: counts summed, the worst device's p99s."""
    if not trials:
        return Verdict(None, "no device reports a trial of this model")
    version = max((t.version for t in trials), key=version_key)
    same = [t for t in trials if t.version == version]
    total = Counts()
    for t in same:
        total = total.add(t.counts)
    worst = max(same, key=_ratio)
    return decide(total, worst.p99_ms, rule or same[0].rule)


def _ratio(t: DeviceTrial) -> float:
    serving, candidate = t.p99_ms
    return candidate / serving if serving and candidate is not None else 0.0


def table(trials: list[DeviceTrial], verdict: Verdict) -> str:
    head = (
        "| device | version | shadowed | escalated | serving~cloud | candidate~cloud "
        "| p99 ms serving/candidate | device says |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---|"]
    for t in trials:
        c, (sp, cp) = t.counts, t.p99_ms
        agree = (
            f"{_share(c.serving_agreed_with_cloud, c.escalated)} | {_share(c.candidate_agreed_with_cloud, c.escalated)}"
        )
        said = t.decision or "pending"
        lines.append(
            f"| {t.device} | {t.version} | {c.shadowed} | {c.escalated} | {agree} | {_ms(sp)} / {_ms(cp)} | {said} |"
        )
    lines.append(f"fleet: {verdict.decision or 'undecided'}: {verdict.why}")
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
