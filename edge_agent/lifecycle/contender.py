"""The candidate beside the serving model: which requests it sees, and what it said about them.

A shadowed request runs on both models (each on its own worker); the client gets the serving model's
answer only, and the trial gets both, with the cloud's answer when the request was escalated. A canary
request is answered by the candidate instead. Shares are drawn per request from a seeded generator,
so a test or a bench replays the same split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.config.models_file import Candidate
from edge_agent.contract.messages import Answer
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import AgentError
from edge_agent.lifecycle.trial import Trial
from edge_agent.runtimes.pool import Served

Role = Literal["shadow", "canary"]


@dataclass
class Contender:
    served: Served  # the candidate, loaded, with its own worker
    config: Candidate
    trial: Trial
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def pick(self) -> Role | None:
        """This request's part for the candidate: answer it (canary), watch it (shadow), or nothing."""
        draw = self.rng.random()
        if draw < self.config.canary:
            return "canary"
        if draw < self.config.canary + self.config.shadow * (1 - self.config.canary):
            return "shadow"
        return None

    async def run(self, text: str, deadline: float) -> Prediction | None:
        """The candidate's answer; None when it failed."""
        try:
            return await self.served.predict(text, deadline)
        except AgentError:
            return None

    def record(
        self, text: str, result: Answer | AgentError, candidate: Prediction | None, would_escalate: bool
    ) -> None:
        """Compare one shadowed request (`would_escalate`: the candidate's own rule would have sent it to the
        cloud); one whose serving answer is unknown (the cloud won a race before the local model answered)
        tells nothing and is left out."""
        serving: Prediction | None = None
        cloud: str | None = None
        if isinstance(result, Answer):
            serving = result.local if result.source == "cloud" else result.prediction
            cloud = result.prediction.label if result.source == "cloud" else None
            if serving is None:
                return
        self.trial.shadowed(
            serving.label if serving else None,
            candidate.label if candidate else None,
            cloud,
            candidate is not None and would_escalate,
            text,
        )
