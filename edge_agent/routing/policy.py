"""The routing policy, pure: which of local and cloud runs, and which answer is kept.

No I/O and no clock: budget, breaker and confidence trend come in as plain values, so every
decision is a table a test can read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edge_agent.config.models_file import ModelEntry
from edge_agent.contract.messages import Route
from edge_agent.contract.prediction import Prediction


class Reason(str, Enum):
    """Why a request went (or tried to go) to the cloud, or why it came back without it.

    A str Enum whose str() is its value (StrEnum's behaviour; StrEnum is 3.11+, the device runs 3.10).
    """

    LOW_CONFIDENCE = "low_confidence"
    UNFAMILIAR = "unfamiliar"  # the text lies far from everything the model was trained on (distance score)
    INVALID_OUTPUT = "invalid_output"
    FORCED = "forced"
    MODEL_MISSING = "model_missing"
    SPECULATIVE = "speculative"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    CLOUD_TIMEOUT = "cloud_timeout"
    CLOUD_ERROR = "cloud_error"
    CLOUD_INVALID = "cloud_invalid"
    NO_CLOUD = "no_cloud"
    LOCAL_ONLY = "local_only"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Policy:
    """The rules for one request: its route, the model's threshold, and whether the cloud may be asked."""

    route: Route
    threshold: float
    cloud: bool
    margin: float = 0.0
    configured: bool = True  # a cloud endpoint exists (it may still be off limits for this route)
    max_distance: float | None = None  # the manifest's distance limit (manifest.Ood), when its rule uses one


def policy_for(
    entry: ModelEntry,
    threshold: float,
    requested: Route | None,
    cloud_configured: bool,
    max_distance: float | None = None,
) -> Policy:
    """The request's route wins over the model's default, except that `local` in models.yaml pins it."""
    route: Route = "local" if entry.route == "local" else (requested or entry.route)
    cloud = cloud_configured and route != "local"
    return Policy(route, threshold, cloud, entry.speculative_margin, cloud_configured, max_distance)


def stays_local(p: Policy) -> Reason:
    """Why an answer the policy would escalate stays local: no cloud at all, or a local-only route."""
    return Reason.NO_CLOUD if not p.configured else Reason.LOCAL_ONLY


def escalation(p: Policy, local: Prediction | None, invalid: bool = False) -> Reason | None:
    """Why the local answer is not enough (None: it is), whether or not the cloud may be asked."""
    if p.route == "cloud":
        return Reason.FORCED
    if invalid:
        return Reason.INVALID_OUTPUT
    if local is None:
        return Reason.MODEL_MISSING
    if local.confidence < p.threshold:
        return Reason.LOW_CONFIDENCE
    if p.max_distance is not None and local.distance is not None and local.distance > p.max_distance:
        return Reason.UNFAMILIAR
    return None


def cloud_first(p: Policy, trend: float) -> bool:
    """Start the cloud together with local: forced, or speculative while recent confidence is low.

    Speculation pays when answers near the threshold come in runs (a new device, a new log format):
    the trend of recent confidences under threshold + margin predicts the next one escalates.
    """
    if not p.cloud:
        return False
    return p.route == "cloud" or (p.margin > 0 and trend < p.threshold + p.margin)


def blocked(breaker_allows: bool, budget_allows: bool) -> Reason | None:
    """Why the cloud may not be called now (None: it may)."""
    if not breaker_allows:
        return Reason.CIRCUIT_OPEN
    if not budget_allows:
        return Reason.BUDGET_EXHAUSTED
    return None


def waits_for_cloud(route: Route, explicit_deadline: bool) -> bool:
    """A forced request without its own deadline waits (spooled) for the cloud instead of falling back."""
    return route == "cloud" and not explicit_deadline
