"""The `models.yaml` schema: what a device serves, and the topics bound to its models.

Paths come back absolute; a model pulled into the store (`store.Store.overlay`) replaces its `path`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.config.sections import Budget
from edge_agent.config.settings import AgentSettings, problems_of, read_mapping
from edge_agent.contract.manifest import NAME_PATTERN, Manifest
from edge_agent.contract.messages import Route
from edge_agent.contract.topics import check_filter, matches
from edge_agent.errors import ArtifactError, ConfigError

TEMPLATE_KEYS = ("{topic}", "{model}", "{device_id}")


class PromotionRule(BaseModel):
    """When a candidate in shadow replaces the serving model (edge_agent/lifecycle/trial.py applies it)."""

    model_config = ConfigDict(extra="forbid")

    min_escalated: int = Field(default=500, ge=1, description="escalated requests compared before deciding")
    min_gain_pt: float = Field(default=1.0, description="agreement with the cloud, candidate minus serving, in points")
    max_p99_ratio: float = Field(default=1.2, gt=0, description="candidate p99 latency / serving p99 latency")
    max_error_increase: float = Field(default=0.0, ge=0, le=1, description="error rate, candidate minus serving")
    min_kept_agreement: float = Field(
        default=0.95, ge=0, le=1, description="agreement with the serving model where it was sure (not escalated)"
    )


class Candidate(BaseModel):
    """A new version trying for the serving model's place: in shadow (answers nobody; compared) and as
    a canary (answers a share of the traffic), until the rule promotes or rejects it."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="the candidate's artifact folder, relative to models.yaml")
    shadow: float = Field(default=1.0, ge=0, le=1, description="share of requests the candidate also runs, silently")
    canary: float = Field(default=0.0, ge=0, le=1, description="share of requests the candidate answers instead")
    promote: PromotionRule = PromotionRule()


class ModelEntry(BaseModel):
    """One artifact a device serves, with per-model limits that may only tighten the manifest's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=rf"^{NAME_PATTERN}$")
    path: Path | None = Field(
        default=None, description="artifact folder, relative to models.yaml; a version pulled into the store wins"
    )
    top_k: int = Field(default=3, ge=1, le=50)
    max_input_chars: int | None = Field(default=None, ge=1)
    threshold: float | None = Field(default=None, ge=0, le=1, description="overrides the manifest's")
    deadline_ms: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1)
    route: Route = Field(
        default="auto", description="default for requests that name none; local: never leaves the device"
    )
    collect_feedback: bool = Field(default=True, description="keep escalations as training data")
    redact: list[str] = Field(default=[], description="regexes masked in stored feedback text")
    budget: Budget = Budget()
    cloud_labels: list[str] = Field(
        default=[],
        description="labels the cloud may answer beyond the model's own: what it teaches comes back as feedback "
        "and `edge-trainer improve` adds them; with no artifact at all, the model is served by the cloud alone",
    )
    candidate: Candidate | None = None
    speculative_margin: float = Field(
        default=0.0, ge=0, le=1, description="call the cloud with local while recent confidence < threshold+margin"
    )

    @property
    def artifact(self) -> Path:
        """The folder to load; ArtifactError when the model is neither pulled nor given a path."""
        if self.path is None and self.cloud_labels:
            raise ArtifactError("no artifact yet (cloud_labels only): it needs a cloud to answer for it")
        if self.path is None:
            raise ArtifactError(f"not on this device yet (no path in models.yaml): edge-agent models pull {self.name}")
        return self.path

    @field_validator("redact")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redact pattern {pattern!r}: {exc}") from None
        return value

    def threshold_for(self, manifest: Manifest) -> float:
        """The escalation threshold this model serves with: models.yaml's override, else the manifest's."""
        return self.threshold if self.threshold is not None else manifest.thresholds.escalate


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
        return check_filter(value)

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


def load_models(path: Path) -> ModelsFile:
    """Parse and cross-check models.yaml; paths come back absolute."""
    if not path.is_file():
        raise ConfigError([f"{path}: models file not found"])
    data = read_mapping(path)
    try:
        models = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_of(exc, str(path))) from None
    problems = _cross_check(models, path)
    if problems:
        raise ConfigError(problems)
    for entry in models.models:
        if entry.path is not None:
            entry.path = (path.parent / entry.path).resolve()
        if entry.candidate is not None:
            entry.candidate.path = (path.parent / entry.candidate.path).resolve()
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


def group_problems(settings: AgentSettings, models: ModelsFile) -> list[str]:
    """In a shared group No Local is not allowed (MQTT 5), so a binding whose output topic falls under its own
    filter would get its results back as new sensor messages, each one level deeper: refused at load."""
    if settings.shared_group is None:
        return []
    problems = []
    for b in models.bindings:
        sample = "/".join("x" if level in ("+", "#") else level for level in b.topic.split("/"))
        output = b.output.format(topic=sample, model=b.model, device_id=settings.device_id)
        if matches(b.topic, output):
            problems.append(
                f"binding {b.topic}: its output {b.output!r} falls under its own filter; "
                "in a shared_group its results would come back to it: choose an output outside the filter"
            )
    return problems
