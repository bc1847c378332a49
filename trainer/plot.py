"""One PNG per evaluation: the risk-coverage curve (what escalating buys) and the reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a build box

import matplotlib.pyplot as plt

SPLITS = ("dev", "test", "data")


def draw(report: dict[str, Any], path: Path) -> Path:
    sections = {name: report[name] for name in SPLITS if name in report}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, sec in sections.items():
        _risk_coverage(left, name, sec)
    if report.get("target_accuracy"):
        left.axhline(report["target_accuracy"], color="grey", linestyle=":", label="target")
    left.set(
        xlabel="coverage (share answered on the device)",
        ylabel="accuracy of kept requests",
        title="risk-coverage",
        xlim=(0, 1.01),
    )
    left.legend(loc="lower left")
    first_name, first = next(iter(sections.items()))
    _reliability(right, first_name, first)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _risk_coverage(ax: Any, name: str, sec: dict[str, Any]) -> None:
    curve = sec["calibration"]["risk_coverage"]
    line = ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], label=name)[0]
    chosen = sec["selective"]
    ax.plot(
        [chosen["coverage"]],
        [chosen["kept_accuracy"]],
        "o",
        color=line.get_color(),
        label=f"{name} @ threshold {chosen['threshold']:.3f}",
    )


def _reliability(ax: Any, name: str, sec: dict[str, Any]) -> None:
    rows = sec["calibration"]["reliability"]
    centres = [(r["lo"] + r["hi"]) / 2 for r in rows]
    widths = [r["hi"] - r["lo"] for r in rows]
    ax.bar(centres, [r["accuracy"] for r in rows], width=widths, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.set(
        xlabel="confidence (after temperature)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability ({name}, ECE {sec['headline']['ece']:.3f})",
    )
    ax.legend(loc="upper left")
