"""What the serving side hands back for each message, so delivery can settle it exactly once.

The transport's half of the seam: delivery knows these outcomes and nothing of how they were reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.contract.messages import Outbound


@dataclass(frozen=True)
class Reply:
    """Publish this; the request is acknowledged once the broker has it."""

    out: Outbound


@dataclass(frozen=True)
class Parked:
    """The request waits in the spool; its reply comes later from the waitlist."""


@dataclass(frozen=True)
class Drop:
    """Nothing can be sent (no sane address): the refusal is logged."""

    why: str


Outcome = Reply | Parked | Drop
