"""The routing policy as tables: no I/O, no clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config.models_file import ModelEntry
from edge_agent.contract.prediction import Prediction
from edge_agent.routing.policy import (
    Policy,
    Reason,
    blocked,
    cloud_first,
    escalation,
    policy_for,
    stays_local,
    waits_for_cloud,
)


def entry(**kw: object) -> ModelEntry:
    return ModelEntry(name="m", path=Path("x"), **kw)  # type: ignore[arg-type]


def pred(confidence: float) -> Prediction:
    return Prediction("a", confidence)


@pytest.mark.parametrize(
    ("model_route", "asked", "cloud", "route", "may_ask"),
    [
        ("auto", None, True, "auto", True),
        ("auto", "cloud", True, "cloud", True),
        ("auto", "local", True, "local", False),
        ("cloud", None, True, "cloud", True),
        ("cloud", "auto", True, "auto", True),
        ("local", "cloud", True, "local", False),  # models.yaml `local` pins the model to the device
        ("auto", "cloud", False, "cloud", False),  # no endpoint configured
    ],
)
def test_policy_route(model_route: str, asked: str | None, cloud: bool, route: str, may_ask: bool) -> None:
    p = policy_for(entry(route=model_route), 0.5, asked, cloud)  # type: ignore[arg-type]
    assert (p.route, p.cloud) == (route, may_ask)


@pytest.mark.parametrize(
    ("route", "cloud", "local", "invalid", "reason"),
    [
        ("auto", True, pred(0.9), False, None),
        ("auto", True, pred(0.5), False, None),  # at the threshold is confident enough
        ("auto", True, pred(0.49), False, Reason.LOW_CONFIDENCE),
        ("auto", True, pred(0.99), True, Reason.INVALID_OUTPUT),
        ("auto", True, None, True, Reason.INVALID_OUTPUT),
        ("auto", True, None, False, Reason.MODEL_MISSING),
        ("cloud", True, pred(0.99), False, Reason.FORCED),
        ("local", False, pred(0.1), False, Reason.LOW_CONFIDENCE),  # wanted, though it cannot go: the reply says so
        ("auto", False, pred(0.1), False, Reason.LOW_CONFIDENCE),
    ],
)
def test_escalation(route: str, cloud: bool, local: Prediction | None, invalid: bool, reason: Reason | None) -> None:
    assert escalation(Policy(route, 0.5, cloud), local, invalid) == reason  # type: ignore[arg-type]


def test_why_an_unconfident_answer_stays_local() -> None:
    assert stays_local(policy_for(entry(), 0.5, None, False)) is Reason.NO_CLOUD
    assert stays_local(policy_for(entry(route="local"), 0.5, None, True)) is Reason.LOCAL_ONLY


@pytest.mark.parametrize(
    ("route", "cloud", "margin", "trend", "early"),
    [
        ("cloud", True, 0.0, 1.0, True),
        ("auto", True, 0.0, 0.1, False),  # speculation off
        ("auto", True, 0.1, 0.59, True),  # recent confidence just above threshold, within the margin
        ("auto", True, 0.1, 0.61, False),
        ("auto", False, 0.1, 0.1, False),
        ("local", False, 0.1, 0.1, False),
    ],
)
def test_cloud_first(route: str, cloud: bool, margin: float, trend: float, early: bool) -> None:
    assert cloud_first(Policy(route, 0.5, cloud, margin), trend) is early  # type: ignore[arg-type]


def test_blocked_prefers_the_breaker_then_the_budget() -> None:
    assert blocked(True, True) is None
    assert blocked(False, True) is Reason.CIRCUIT_OPEN
    assert blocked(False, False) is Reason.CIRCUIT_OPEN
    assert blocked(True, False) is Reason.BUDGET_EXHAUSTED


def test_only_forced_requests_without_their_own_deadline_wait() -> None:
    assert waits_for_cloud("cloud", explicit_deadline=False)
    assert not waits_for_cloud("cloud", explicit_deadline=True)
    assert not waits_for_cloud("auto", explicit_deadline=False)


def test_a_reason_reads_as_its_value_in_logs_replies_and_feedback() -> None:
    reason = Reason.LOW_CONFIDENCE
    assert str(reason) == f"{reason}" == "low_confidence" and json.dumps(reason) == '"low_confidence"'
    assert reason == "low_confidence" and Reason("cloud_timeout") is Reason.CLOUD_TIMEOUT


@pytest.mark.parametrize(
    ("confidence", "distance", "limit", "reason"),
    [
        (0.9, 2.0, 5.0, None),
        (0.9, 6.0, 5.0, Reason.UNFAMILIAR),  # sure among its labels, but unlike anything it was trained on
        (0.3, 6.0, 5.0, Reason.LOW_CONFIDENCE),  # both: the confidence is named first
        (0.9, 6.0, None, None),  # the rule is softmax: the distance is reported, not used
        (0.9, None, 5.0, None),  # a runtime without the score (GGUF)
    ],
)
def test_distance_limit(confidence: float, distance: float | None, limit: float | None, reason: Reason | None) -> None:
    p = policy_for(entry(), 0.5, None, True, limit)
    assert escalation(p, Prediction("a", confidence, distance=distance)) == reason
