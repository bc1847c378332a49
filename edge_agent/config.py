"""Agent settings (env `EDGE_AGENT_*`, a YAML/TOML file, CLI flags) and the `models.yaml` schema.

Loading collects every problem before failing, so an operator fixes a config in one pass.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.errors import ConfigError

TEMPLATE_KEYS = ("{topic}", "{model}", "{device_id}")


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


class AgentSettings(BaseSettings):
    """Process-wide settings; `EDGE_AGENT_MQTT__HOST` sets `mqtt.host`."""

    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", env_nested_delimiter="__", extra="forbid")

    device_id: str = Field(default_factory=socket.gethostname)
    prefix: str = Field(default="edge-agent/{device_id}", description="topic prefix of the request API")
    models_file: Path = Path("models.yaml")
    mqtt: MqttSettings = MqttSettings()
    max_payload_bytes: int = Field(default=65536, ge=64)
    max_inflight: int = Field(default=64, ge=1, description="accepted, unfinished messages")
    deadline_ms: int = Field(default=5000, ge=1, description="default when a request sets none")
    threads: int = Field(default=2, ge=1, description="onnxruntime intra-op threads per model")
    batch_max: int = Field(default=16, ge=1, description="requests one model pass may take")
    signing_key_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("device_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/+#\0"):
            raise ValueError("must be non-empty and hold none of / + # NUL")
        return value

    @property
    def topic_prefix(self) -> str:
        return self.prefix.format(device_id=self.device_id).rstrip("/")

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-agent-{self.device_id}"

    def signing_key(self) -> bytes | None:
        return self.signing_key_file.read_bytes().strip() if self.signing_key_file else None


class ModelEntry(BaseModel):
    """One artifact a device serves, with per-model limits that may only tighten the manifest's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    path: Path = Field(description="artifact folder, relative to models.yaml")
    top_k: int = Field(default=3, ge=1, le=50)
    max_input_chars: int | None = Field(default=None, ge=1)
    threshold: float | None = Field(default=None, ge=0, le=1, description="overrides the manifest's")
    deadline_ms: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1)


class Binding(BaseModel):
    """Sensors publish, they do not ask: a topic filter bound to a model and an output topic."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, description="MQTT topic filter, e.g. sensors/+/log")
    model: str
    output: str = Field(default="results/{topic}", description="placeholders: {topic} {model} {device_id}")
    text_field: str | None = Field(default=None, description="dot path into a JSON payload; none: raw")

    @field_validator("topic")
    @classmethod
    def _filter_ok(cls, value: str) -> str:
        levels = value.split("/")
        for i, level in enumerate(levels):
            if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
                raise ValueError(f"invalid topic filter {value!r}")
        return value

    @field_validator("output")
    @classmethod
    def _output_ok(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError(f"output topic {value!r} must not contain wildcards")
        stripped = value
        for key in TEMPLATE_KEYS:
            stripped = stripped.replace(key, "")
        if "{" in stripped or "}" in stripped:
            raise ValueError(f"output {value!r}: only {', '.join(TEMPLATE_KEYS)} may be used")
        return value


class ModelsFile(BaseModel):
    """The `models.yaml` a device serves from."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)
    bindings: list[Binding] = []

    def entry(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)


def _problems(exc: ValidationError, source: str) -> list[str]:
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
        raise ConfigError(_problems(exc, str(file or "settings"))) from None


def load_models(path: Path) -> ModelsFile:
    """Parse and cross-check models.yaml; paths come back absolute."""
    if not path.is_file():
        raise ConfigError([f"{path}: models file not found"])
    data = read_mapping(path)
    try:
        models = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, str(path))) from None
    problems = _cross_check(models, path)
    if problems:
        raise ConfigError(problems)
    for entry in models.models:
        entry.path = (path.parent / entry.path).resolve()
    return models


def _cross_check(models: ModelsFile, path: Path) -> list[str]:
    problems = []
    names = [m.name for m in models.models]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path}: model {name!r} is declared more than once")
    for i, binding in enumerate(models.bindings):
        if binding.model not in names:
            problems.append(f"{path}: bindings.{i}: model {binding.model!r} is not declared under models")
    return problems
