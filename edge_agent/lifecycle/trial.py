"""A candidate earning its place: shadow and canary bookkeeping, and the promotion rule's verdict.

Pure bookkeeping, no I/O (as `probation`): the router reports each shadowed request (what the serving
model and the candidate said, the cloud's answer when the request was escalated, both latencies, whether
the candidate failed) and each canary answer. `decide` applies the models.yaml rule to the counts; the
fleet report applies the same function to the counts of many devices added together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edge_agent.config.models_file import PromotionRule

Decision = Literal["promote", "reject"]
DUEL_TEXTS = 200  # shadowed texts (the newest) both models answer, alternately, to compare their p99


@dataclass
class Counts:
    """What a shadow trial has seen; additive across devices (latencies aside: p99s are compared per device)."""

    shadowed: int = 0
    candidate_errors: int = 0
    serving_errors: int = 0
    agreed_with_serving: int = 0
    kept: int = 0  # shadowed requests the serving model answered itself
    agreed_on_kept: int = 0
    escalated: int = 0  # shadowed requests the cloud answered
    serving_agreed_with_cloud: int = 0
    candidate_agreed_with_cloud: int = 0
    candidate_would_escalate: int = 0
    canary_answers: int = 0
    canary_errors: int = 0

    def add(self, other: Counts) -> Counts:
        return Counts(**{k: v + getattr(other, k) for k, v in asdict(self).items()})


@dataclass(frozen=True)
class Verdict:
    decision: Decision | None  # None: not enough escalated requests compared yet
    why: str
    figures: dict[str, Any] = field(default_factory=dict)


def decide(counts: Counts, p99_ms: tuple[float | None, float | None], rule: PromotionRule) -> Verdict:
    """The rule on the counts: promote when the candidate agrees with the cloud by `min_gain_pt` more
    than the serving model on at least `min_escalated` escalated requests, its p99 latency is within
    `max_p99_ratio` of the serving model's, its error rate (shadow and canary) no more than
    `max_error_increase` higher, and it still agrees with the serving model on `min_kept_agreement` of
    the requests that model was sure of (a gain on escalations must not cost the confident majority)."""
    figures = _figures(counts, p99_ms)
    if counts.escalated < rule.min_escalated:
        return Verdict(None, f"{counts.escalated} of {rule.min_escalated} escalated requests compared", figures)
    if figures["error_increase"] > rule.max_error_increase:
        return Verdict("reject", f"error rate up {100 * figures['error_increase']:.2f} pt", figures)
    kept = figures["kept_agreement"]
    if counts.kept and kept < rule.min_kept_agreement:
        return Verdict("reject", f"agrees with the serving model on {100 * kept:.1f}% of what it was sure of", figures)
    ratio = figures["p99_ratio"]
    if ratio is not None and ratio > rule.max_p99_ratio:
        return Verdict(
            "reject", f"p99 latency {ratio:.2f}x the serving model's (limit {rule.max_p99_ratio:g}x)", figures
        )
    gain = figures["cloud_gain_pt"]
    if gain < rule.min_gain_pt:
        return Verdict("reject", f"agreement with the cloud {gain:+.1f} pt (needs {rule.min_gain_pt:+.1f})", figures)
    return Verdict("promote", f"agreement with the cloud {gain:+.1f} pt on {counts.escalated} escalated", figures)


def _figures(c: Counts, p99_ms: tuple[float | None, float | None]) -> dict[str, Any]:
    def share(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    serving_p99, candidate_p99 = p99_ms
    ratio = candidate_p99 / serving_p99 if serving_p99 and candidate_p99 is not None else None
    return {
        "serving_cloud_agreement": round(share(c.serving_agreed_with_cloud, c.escalated), 4),
        "candidate_cloud_agreement": round(share(c.candidate_agreed_with_cloud, c.escalated), 4),
        "cloud_gain_pt": round(
            100 * share(c.candidate_agreed_with_cloud - c.serving_agreed_with_cloud, c.escalated), 2
        ),
        "agreement_with_serving": round(share(c.agreed_with_serving, c.shadowed), 4),
        "kept_agreement": round(share(c.agreed_on_kept, c.kept), 4),
        "candidate_escalation_share": round(share(c.candidate_would_escalate, c.shadowed), 4),
        "error_increase": round(
            share(c.candidate_errors + c.canary_errors, c.shadowed + c.canary_answers)
            - share(c.serving_errors, c.shadowed),
            4,
        ),
        "serving_p99_ms": None if serving_p99 is None else round(serving_p99, 2),
        "candidate_p99_ms": None if candidate_p99 is None else round(candidate_p99, 2),
        "p99_ratio": None if ratio is None else round(ratio, 3),
    }


class Trial:
    """One candidate's trial on this device: the counts, both sides' latencies, and the rule."""

    def __init__(self, model: str, version: str, rule: PromotionRule) -> None:
        self.model, self.version, self.rule = model, version, rule
        self.counts = Counts()
        self.texts: list[str] = []  # the newest shadowed texts, for the latency duel
        self.timed: tuple[float | None, float | None] | None = None  # (serving, candidate) p99 ms, once dueled
        self.verdict: Verdict | None = None  # set once decided; the trial then ends

    def shadowed(
        self,
        serving: str | None,
        candidate: str | None,
        cloud: str | None,
        would_escalate: bool,
        text: str = "",
    ) -> None:
        """One request both answered (a None label: that side failed); `cloud` when it was escalated."""
        c = self.counts
        c.shadowed += 1
        c.serving_errors += serving is None
        c.candidate_errors += candidate is None
        c.agreed_with_serving += serving is not None and serving == candidate
        c.candidate_would_escalate += would_escalate
        if cloud is None and serving is not None:
            c.kept += 1
            c.agreed_on_kept += serving == candidate
        if cloud is not None:
            c.escalated += 1
            c.serving_agreed_with_cloud += serving == cloud
            c.candidate_agreed_with_cloud += candidate == cloud
        if text:
            self.texts.append(text)
            del self.texts[:-DUEL_TEXTS]

    def canary(self, ok: bool) -> None:
        self.counts.canary_answers += 1
        self.counts.canary_errors += not ok

    def p99s(self) -> tuple[float | None, float | None]:
        """From the duel: both models timed on the same texts, one after the other. Shadow passes are not
        timed: they run after a reply, beside the next request and the agent's own work, so on a 2-core
        board they would time the candidate as slower than it is (measured: 1.5-1.8x for equal models)."""
        return self.timed or (None, None)

    def ready(self) -> bool:
        """Enough escalated requests compared for the rule to decide (cheap: no latency sort)."""
        return self.counts.escalated >= self.rule.min_escalated

    def judge(self) -> Verdict:
        return decide(self.counts, self.p99s(), self.rule)

    def snapshot(self) -> dict[str, Any]:
        """For the status topic and `fleet-report`: the counts, the figures, the rule, any decision."""
        verdict = self.verdict or self.judge()
        return {
            "version": self.version,
            "counts": asdict(self.counts),
            "figures": verdict.figures,
            "rule": self.rule.model_dump(),
            "decision": verdict.decision if self.verdict else None,
            "why": verdict.why,
        }
