"""The fleet's verbs of `edge-trainer`, beside both paths: `keygen` (the key devices trust) and `fleet-report`
(every device's trial of a candidate, one decision).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainer.errors import UsageError


def register(sub: Any) -> None:
    _fleet(sub.add_parser("fleet-report", help="every device's trial of a candidate, from the broker: one decision"))
    _keygen(sub.add_parser("keygen", help="a new Ed25519 key pair: signing.key (build box), signing.pub (devices)"))


def _keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for signing.key and signing.pub")
    p.set_defaults(handler=_run_keygen)


def _run_keygen(a: argparse.Namespace) -> str:
    from edge_agent.contract import signing

    try:
        private, public = signing.keygen(a.out)
    except FileExistsError:
        raise UsageError(f"{a.out / signing.PRIVATE}: exists; a key is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"{a.out}: {exc.strerror}") from None
    kid = signing.key_id(signing.load_public(public))
    return f"{private} (keep on the build box)\n{public} (key id {kid}: list it in the devices' trusted_keys)"


def _fleet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the fleet's broker")
    p.add_argument(
        "--statuses",
        default="edge-agent/+/status",
        help="topic filter of the agents' retained statuses (default edge-agent/+/status; a shared group's "
        "agents: PREFIX/agents/+/status)",
    )
    p.add_argument("--model", required=True, help="the model whose candidate is on trial")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    p.add_argument("--json", action="store_true", help="print the devices and the decision as JSON")
    p.set_defaults(handler=_run_fleet)


def _run_fleet(a: argparse.Namespace) -> str:
    from dataclasses import asdict

    from trainer import fleet

    host, _, port = a.broker.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--broker {a.broker!r}: expected HOST:PORT")
    trials = fleet.gather(host, int(port), a.statuses, a.model, a.timeout)
    verdict = fleet.judge(trials)
    if a.json:
        devices = [{**asdict(t), "rule": t.rule.model_dump()} for t in trials]
        return json.dumps({"devices": devices, "decision": verdict.decision, "why": verdict.why, **verdict.figures})
    return fleet.table(trials, verdict)
