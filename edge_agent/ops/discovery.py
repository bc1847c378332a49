"""Home Assistant MQTT discovery, as payloads: the configs that make the agent a device with entities, the
event each result fires, and the state its operator sensors read.

Pure: built from what the agent serves (never from what models.yaml merely names), so Home Assistant shows
exactly the models the device answers for. serving/homeassistant.py publishes them. The schema is Home
Assistant's single-component discovery (home-assistant.io/integrations/mqtt, "MQTT Discovery"):
`{prefix}/{component}/{node_id}/{object_id}/config`, node and object ids of `[a-zA-Z0-9_-]` only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from edge_agent import __version__
from edge_agent.config.models_file import Binding
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.messages import Answer
from edge_agent.ops.metrics import labels_of

EXTRACTED = "extracted"  # the event type of a model without labels (an extraction)
# A binding's event entity reads its model's events and keeps its own: Home Assistant ignores an event
# whose template renders empty.
BINDING_TEMPLATE = "{% if value_json.get('binding') == '$key' %}{{ value }}{% endif %}"


def slug(text: str) -> str:
    """A discovery topic's node or object id: anything outside `[a-zA-Z0-9_-]` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def binding_key(binding: Binding) -> str:
    """A binding's stable id: from its topic filter and model, so reordering models.yaml keeps its entity."""
    return hashlib.blake2b(f"{binding.topic}\0{binding.model}".encode(), digest_size=5).hexdigest()


@dataclass(frozen=True)
class Discovery:
    """One device's discovery: its topics and payloads, from the settings and what it serves."""

    settings: AgentSettings

    @property
    def prefix(self) -> str:
        return self.settings.homeassistant.prefix

    @property
    def node(self) -> str:
        return slug(self.settings.device_id)

    @property
    def birth_topic(self) -> str:
        """Home Assistant says `online` here when it (re)starts: every config is published again."""
        return f"{self.prefix}/status"

    @property
    def own_configs(self) -> str:
        """This device's retained configs (a filter): those of a model no longer served are cleared."""
        return f"{self.prefix}/+/{self.node}/+/config"

    def owns(self, topic: str) -> bool:
        parts = topic.split("/")
        return len(parts) == 5 and parts[0] == self.prefix and parts[2] == self.node and parts[4] == "config"

    def event_topic(self, model: str) -> str:
        return f"{self.settings.agent_prefix}/ha/{model}/event"

    def state_topic(self, model: str) -> str:
        return f"{self.settings.agent_prefix}/ha/{model}/state"

    def configs(self, served: dict[str, Manifest], bindings: list[Binding]) -> dict[str, dict[str, Any]]:
        """Every config topic with its payload: per served model an event entity and three sensors, per
        binding of a served model an event entity."""
        shared = {"device": self._device(served), "origin": _origin(), **self._availability()}
        out: dict[str, dict[str, Any]] = {}
        for name, manifest in sorted(served.items()):
            out.update(self._model(name, manifest, shared))
        for binding in bindings:
            if binding.model in served:
                out.update(self._binding(binding, served[binding.model], shared))
        return out

    def _model(self, name: str, manifest: Manifest, shared: dict[str, Any]) -> dict[str, dict[str, Any]]:
        state = self.state_topic(name)
        return {
            self._topic("event", f"{name}_event"): {
                **self._entity(f"{name}_event", "event", name),
                "state_topic": self.event_topic(name),
                "event_types": event_types(manifest),
                "icon": "mdi:tag-text-outline",
                **shared,
            },
            self._topic("sensor", f"{name}_requests"): {
                **self._entity(f"{name}_requests", "sensor", f"{name} requests"),
                "state_topic": state,
                "value_template": "{{ value_json.requests }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "requests",
                "icon": "mdi:counter",
                **shared,
            },
            self._topic("sensor", f"{name}_escalation_share"): {
                **self._entity(f"{name}_escalation_share", "sensor", f"{name} escalation share"),
                "state_topic": state,
                "value_template": "{{ value_json.escalation_share }}",
                "state_class": "measurement",
                "unit_of_measurement": "%",
                "suggested_display_precision": 1,
                "icon": "mdi:cloud-upload-outline",
                **shared,
            },
            self._topic("sensor", f"{name}_version"): {
                **self._entity(f"{name}_version", "sensor", f"{name} version"),
                "state_topic": state,
                "value_template": "{{ value_json.version }}",
                "entity_category": "diagnostic",
                "icon": "mdi:tag-outline",
                **shared,
            },
        }

    def _binding(self, binding: Binding, manifest: Manifest, shared: dict[str, Any]) -> dict[str, dict[str, Any]]:
        key = binding_key(binding)
        return {
            self._topic("event", f"binding_{key}"): {
                **self._entity(f"binding_{key}", "event", f"{binding.topic} → {binding.model}"),
                "state_topic": self.event_topic(binding.model),
                "value_template": BINDING_TEMPLATE.replace("$key", key),
                "event_types": event_types(manifest),
                "icon": "mdi:access-point",
                **shared,
            }
        }

    def _topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{slug(object_id)}/config"

    def _entity(self, object_id: str, component: str, name: str) -> dict[str, Any]:
        """What identifies an entity: a unique id for the registry, the entity id it is first given, its name."""
        unique = f"edge_agent_{self.settings.device_id}_{object_id}"
        return {
            "name": name,
            "unique_id": unique,
            "default_entity_id": f"{component}.{slug(unique).lower().replace('-', '_')}",
            "qos": 1,
        }

    def _device(self, served: dict[str, Manifest]) -> dict[str, Any]:
        """The device: the agent on this board; its software version is what it serves, as pulls change it."""
        return {
            "identifiers": [f"edge_agent_{self.settings.device_id}"],
            "name": f"edge-agent {self.settings.device_id}",
            "manufacturer": "edge-agent",
            "model": "edge-agent",
            "sw_version": ", ".join(f"{name} {m.version}" for name, m in sorted(served.items())) or "no models",
        }

    def _availability(self) -> dict[str, Any]:
        """Tied to the agent's retained status, whose last will says offline when the agent dies."""
        return {
            "availability": [
                {
                    "topic": f"{self.settings.agent_prefix}/status",
                    "value_template": "{{ value_json.status }}",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ]
        }


def _origin() -> dict[str, str]:
    return {"name": "edge-agent", "sw_version": __version__}


def event_types(manifest: Manifest) -> list[str]:
    """The model's labels; an extraction (no labels) fires one type."""
    return list(manifest.labels) or [EXTRACTED]


def event(answer: Answer, binding: Binding | None, topic: str | None) -> dict[str, Any]:
    """The event a result fires: its label as the event type, the rest as the event's attributes."""
    p = answer.prediction
    out: dict[str, Any] = {
        "event_type": p.label or EXTRACTED,
        "confidence": None if answer.source == "cloud" else round(p.confidence, 4),
        "source": answer.source,
        "entities": [e.as_dict() for e in p.entities],
        "version": p.version,
    }
    if p.fields is not None:
        out["fields"] = p.fields
    if binding is not None:
        out.update(binding=binding_key(binding), topic=topic)
    return out


def state(model: str, version: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the operator sensors read, from the metrics summary: the model's replies (requests and sensor
    messages), the share of its answers the cloud was asked about (as `edge-agent status` counts it), and
    the version serving."""
    replies = _of(metrics.get("edge_agent_requests_total", {}), model)
    answered = _of(metrics.get("edge_agent_requests_total", {}), model, outcome="answered")
    escalated = _of(metrics.get("edge_agent_escalations_total", {}), model)
    share = round(100 * escalated / answered, 2) if answered else 0.0
    return {"version": version, "requests": int(replies), "escalation_share": share}


def _of(samples: dict[str, float], model: str, **wanted: str) -> float:
    """The sum of a counter's samples for one model (and any other labels `wanted`)."""
    total = 0.0
    for key, value in samples.items():
        labels = labels_of(key)
        if labels.get("model") == model and all(labels.get(k) == v for k, v in wanted.items()):
            total += value
    return total
