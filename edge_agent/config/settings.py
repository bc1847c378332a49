"""Agent settings: env `EDGE_AGENT_*`, a YAML/TOML file, CLI flags (the `models.yaml` schema is models_file.py).

Loading collects every problem before failing, so an operator fixes a config in one pass.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.config.sections import (
    CloudSettings,
    HomeAssistantSettings,
    MetricsSettings,
    MqttSettings,
    ProbationSettings,
    RegistrySettings,
    loopback,
)
from edge_agent.contract.signing import load_public
from edge_agent.contract.topics import check_filter
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if sys.version_info >= (3, 11):
    import tomllib
else:  # the device install (Ubuntu 22.04 / JetPack 6) runs 3.10: the same parser, as a backport
    import tomli as tomllib


def _default_state_dir() -> Path:
    """systemd's StateDirectory= when set (first entry), else ./var."""
    return Path(os.environ.get("STATE_DIRECTORY", "var").split(":")[0])


class AgentSettings(BaseSettings):
    """Process-wide settings; `EDGE_AGENT_MQTT__HOST` sets `mqtt.host`."""

    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", env_nested_delimiter="__", extra="forbid")

    device_id: str = Field(default_factory=socket.gethostname)
    prefix: str = Field(default="edge-agent/{device_id}", description="topic prefix of the request API")
    shared_group: str | None = Field(
        default=None,
        description="MQTT 5 shared subscription group: agents with the same group and prefix share one request "
        "stream ($share/{group}/...), each message answered by one of them; their own topics (status, metrics, "
        "commands) move under {prefix}/agents/{device_id}",
    )
    models_file: Path = Path("models.yaml")
    mqtt: MqttSettings = MqttSettings()
    reply_topics: list[str] = Field(
        default=[], description="topic filters a client's reply address must match (empty: any address)"
    )
    reply_to_agent_topics: bool = Field(
        default=False, description="let clients have replies published inside the agents' own API topics"
    )
    max_payload_bytes: int = Field(default=65536, ge=64)
    max_inflight: int = Field(default=64, ge=1, description="messages answered at once (MQTT 5 Receive Maximum)")
    backlog_bytes: int = Field(
        default=8 << 20, ge=0, description="payload bytes of QoS 1 requests (MQTT 5) that may wait for a free slot"
    )
    deadline_ms: int = Field(default=5000, ge=1, description="default when a request sets none")
    loop_stall_ms: int = Field(
        default=0, ge=0, description="log every callback holding the event loop longer than this (0: off; debug)"
    )
    command_deadline_s: float = Field(
        default=30.0, gt=0, description="an operator's command is answered within this (`timeout`: still running)"
    )
    threads: int = Field(default=2, ge=1, description="onnxruntime intra-op threads per model")
    batch_max: int = Field(
        default=32,
        ge=1,
        description="texts one ONNX model pass may take, for models whose answers do not depend on the batch "
        "(static int8 or float; a dynamic int8 model is always served one text per pass)",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="how long a pass waits for more texts once one is queued; 0: it takes what queued while "
        "the previous pass ran (no added latency when idle)",
    )
    trusted_keys: list[Path] = Field(
        default=[], description="Ed25519 public keys (PEM) artifacts must be signed by; empty: unsigned accepted"
    )
    signing_key_file: Path | None = Field(default=None, description="retired (the shared HMAC key): refused")
    registry: RegistrySettings | None = Field(default=None, description="where `models pull` fetches artifacts")
    probation: ProbationSettings = ProbationSettings()
    metrics: MetricsSettings = MetricsSettings()
    cloud: CloudSettings | None = Field(default=None, description="escalation endpoint; none: local only")
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    state_dir: Path = Field(default_factory=_default_state_dir, description="spool and feedback live here")
    feedback_max_rows: int = Field(default=10000, ge=1, description="per model; oldest rows go first")
    feedback_max_bytes: int = Field(
        default=16 << 20, ge=4096, description="per model file; oldest rows go first, a row larger is not kept"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("device_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/+#\0"):
            raise ValueError("must be non-empty and hold none of / + # NUL")
        return value

    @field_validator("shared_group")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#\0")):
            raise ValueError("must be non-empty and hold none of / + # NUL")
        return value

    @model_validator(mode="after")
    def _group_shares_a_prefix(self) -> AgentSettings:
        if self.shared_group is not None and "{device_id}" in self.prefix:
            raise PydanticCustomError(
                "shared_prefix",
                "shared_group: the agents of a group share one request prefix, but prefix {prefix!r} holds "
                "{{device_id}}: set prefix to the group's own, e.g. edge-agent/site1",
                {"prefix": self.prefix},
            )
        return self

    @field_validator("signing_key_file")
    @classmethod
    def _hmac_retired(cls, value: Path | None) -> Path | None:
        if value is not None:
            raise PydanticCustomError(
                "retired",
                "the shared HMAC fleet key is retired (one device could sign for the fleet): "
                "set trusted_keys to the fleet's Ed25519 public key files (edge-trainer keygen)",
            )
        return value

    @field_validator("trusted_keys")
    @classmethod
    def _keys_usable(cls, value: list[Path]) -> list[Path]:
        """At load, so a bad key stops `check` and `run` instead of quietly switching verification off."""
        for path in value:
            try:
                load_public(path)
            except ValueError as exc:
                raise PydanticCustomError("trusted_key", "{problem}", {"problem": str(exc)}) from None
        return value

    @field_validator("reply_topics")
    @classmethod
    def _filters_ok(cls, value: list[str]) -> list[str]:
        for topic in value:
            check_filter(topic)
        return value

    @property
    def fleet_filter(self) -> str:
        """Every device's prefix as one filter (`edge-agent/+`): replies never go into the fleet's API. A
        group's shared prefix (`edge-agent/site1`) stands for its site: its siblings are protected too."""
        prefix = self.prefix.replace("{device_id}", "+").rstrip("/")
        if self.shared_group is not None and "/" in prefix:
            return prefix.rsplit("/", 1)[0] + "/+"
        return prefix

    @field_validator("cloud")
    @classmethod
    def _key_not_in_clear(cls, value: CloudSettings | None) -> CloudSettings | None:
        """Refused at load; checked here, not on CloudSettings, which is also built directly (placeholder limits)."""
        if value is None or value.allow_insecure_http:
            return value
        url = httpx.URL(value.base_url)  # the client's own parser: the host checked is the host it calls
        if url.scheme == "http" and not loopback(url.host):
            raise PydanticCustomError(
                "insecure_http",
                "base_url: http:// to {host} would send the API key in clear; "
                "use https://, or set cloud.allow_insecure_http: true",
                {"host": url.host},
            )
        return value

    @property
    def topic_prefix(self) -> str:
        return self.prefix.format(device_id=self.device_id).rstrip("/")

    @property
    def agent_prefix(self) -> str:
        """Where this agent's own topics live (status, metrics, commands): the prefix itself, or, in a
        shared group, `{prefix}/agents/{device_id}` so each member keeps its own."""
        if self.shared_group is None:
            return self.topic_prefix
        return f"{self.topic_prefix}/agents/{self.device_id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-agent-{self.device_id}"

    def trusted(self) -> list[Ed25519PublicKey]:
        """The public keys artifacts are checked against; ConfigError when a file went bad after loading."""
        try:
            return [load_public(path) for path in self.trusted_keys]
        except ValueError as exc:
            raise ConfigError([f"trusted_keys: {exc}"]) from None


def problems_of(exc: ValidationError, source: str) -> list[str]:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {err['msg']}")
    return lines


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML or TOML file as a dict; ConfigError (one line) when unreadable."""
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([f"{path}: not valid {path.suffix.lstrip('.') or 'yaml'}: {first}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must hold a mapping at the top level"])
    return data


class _FileSource(PydanticBaseSettingsSource):
    """Values from the settings file, below env and CLI flags in priority."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def load_settings(file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from defaults < file < env < CLI flags (overrides); every problem at once."""
    data = read_mapping(file) if file else {}

    class _Settings(AgentSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _FileSource(settings_cls, data))

    try:
        return _Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(problems_of(exc, str(file or "settings"))) from None
