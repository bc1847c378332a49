"""The sections of the agent's settings (`mqtt`, `cloud`, `registry`, `probation`, `metrics`, `homeassistant`):
one pydantic model each, validated on its own; settings.py assembles them with the top-level fields.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from edge_agent.contract.topics import topic_problem


class MqttSettings(BaseModel):
    """How to reach the broker. Secrets come from env or a file, never from models.yaml."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1", "auto"] = Field(
        default="auto", description="auto: MQTT 5, falling back to 3.1.1 if the broker refuses it"
    )
    client_id: str | None = Field(default=None, description="default: edge-agent-{device_id}")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=86400, ge=0, description="broker keeps our queue this long")
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=30, ge=1)


class Budget(BaseModel):
    """How many cloud calls may be made; None: no limit on that window."""

    model_config = ConfigDict(extra="forbid")

    per_hour: int | None = Field(default=None, ge=0)
    per_day: int | None = Field(default=None, ge=0)


class CloudSettings(BaseModel):
    """An OpenAI-compatible endpoint for escalations. The key comes from env or a file, never inline."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://", description="up to /v1, e.g. http://127.0.0.1:8080/v1")
    model: str = Field(min_length=1, description="model name the server expects")
    api_key_env: str | None = Field(default=None, description="env var holding the API key")
    api_key_file: Path | None = Field(default=None, description="file holding the API key")
    timeout_s: float = Field(default=10.0, gt=0, description="per attempt; the request deadline cuts it shorter")
    retries: int = Field(default=2, ge=0, description="extra attempts on 429 and 5xx only")
    backoff_s: float = Field(default=0.2, ge=0, description="first retry delay; doubles, with jitter")
    response_format: Literal["auto", "json_schema", "json_object", "prompt"] = Field(
        default="auto",
        description="auto: json_schema, then json_object, then prompt as the server refuses each (remembered); "
        "json_schema: OpenAI structured outputs; json_object: with `schema` (llama-cpp-python); "
        "prompt: instructions only. Answers are validated in every mode.",
    )
    budget: Budget = Budget()
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="open time before a probe")
    wait_ttl_s: float = Field(default=3600.0, gt=0, description="how long route=cloud requests wait for it")
    wait_max: int = Field(default=1000, ge=0, description="route=cloud requests that may wait at once")
    allow_insecure_http: bool = Field(
        default=False, description="allow http:// to a host that is not loopback: the API key and texts travel in clear"
    )
    price_per_call_usd: float = Field(default=0.0, ge=0, description="estimated cost of one answered call")
    price_per_1k_prompt_tokens_usd: float = Field(default=0.0, ge=0, description="as the provider bills them")
    price_per_1k_completion_tokens_usd: float = Field(default=0.0, ge=0, description="as the provider bills them")

    @field_validator("base_url")
    @classmethod
    def _url_parses(cls, value: str) -> str:
        try:
            httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        return value

    def api_key(self) -> str | None:
        """The key, or None when none is configured; OSError/KeyError name what is missing."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        if self.api_key_env is not None:
            return os.environ[self.api_key_env]
        return None


def loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, written canonically (anything else is treated as remote)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class RegistrySettings(BaseModel):
    """Where artifacts are pulled from: a folder, file:// or http(s):// holding `{name}/latest.json`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="folder path, file://... or http(s)://...")
    poll_minutes: float = Field(default=0.0, ge=0, description="check latest.json this often; 0: only when told")
    timeout_s: float = Field(default=30.0, gt=0, description="per HTTP read")
    deadline_s: float = Field(default=1800.0, gt=0, description="a whole file's download, at most")
    min_bytes_per_s: int = Field(
        default=2048, ge=0, description="a download slower than this (after its first 30 s) is refused: a trickle"
    )


class ProbationSettings(BaseModel):
    """After a swap, the new version is watched; crossing a limit rolls it back by itself."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(default=100, ge=1, description="local answers that end the window (or `minutes`)")
    minutes: float = Field(default=10.0, gt=0, description="time that ends the window (or `requests`)")
    min_requests: int = Field(default=10, ge=1, description="answers seen before a rate can fail the version")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="timeouts and internal errors, of answers")
    max_p99_ms: float | None = Field(default=None, gt=0, description="local latency; none: not watched")
    min_agreement: float = Field(default=0.5, ge=0, le=1, description="with the cloud on escalations, when seen")


class MetricsSettings(BaseModel):
    """The Prometheus endpoint (loopback by default: the numbers name models and volumes) and the MQTT summary."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    address: str = Field(default="127.0.0.1", description="where GET /metrics and /summary are served")
    port: int = Field(default=9877, ge=1, le=65535)
    publish_s: float = Field(
        default=60.0, ge=0, description="the summary on {prefix}/metrics (retained) this often (>= 0.1 s); 0: never"
    )

    @field_validator("publish_s")
    @classmethod
    def _not_a_flood(cls, value: float) -> float:
        return _period(value, 0.1, "summary")


class HomeAssistantSettings(BaseModel):
    """Home Assistant's MQTT discovery: the agent announces itself as a device with event and sensor entities."""

    model_config = ConfigDict(extra="forbid")

    discovery: bool = Field(default=False, description="publish retained discovery configs under `prefix`")
    prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix (one topic level)")
    state_s: float = Field(
        default=60.0, ge=0, description="operator sensors (requests, escalation share) this often (>= 1 s); 0: never"
    )

    @field_validator("prefix")
    @classmethod
    def _one_level(cls, value: str) -> str:
        problem = topic_problem(value) or ("holds a /" if "/" in value else None)
        if problem is None and value.startswith("$"):
            problem = "starts with $ (the broker's own topics)"
        if problem is not None:
            raise ValueError(f"must be one topic level, but {value!r} {problem}")
        return value

    @field_validator("state_s")
    @classmethod
    def _not_a_flood(cls, value: float) -> float:
        return _period(value, 1, "update")


def _period(value: float, least: float, what: str) -> float:
    """A retained publish's period: 0 (never) or at least `least` seconds, so a typo cannot flood the broker."""
    if 0 < value < least:
        raise ValueError(f"must be 0 (never) or at least {least:g} s: each {what} is a retained publish")
    return value
