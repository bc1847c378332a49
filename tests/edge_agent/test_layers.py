"""edge_agent's rooms import one way (ARCHITECTURE.md, "Rooms"): down the list below, never back up.

Read from the sources (nothing imported), at the top of a module or inside a function, under TYPE_CHECKING
too: a type is an arrow like any other. A room may import its own modules and any room below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE_AGENT = Path(__file__).resolve().parents[2] / "edge_agent"
TRAINER = EDGE_AGENT.parent / "trainer"
# Top to bottom; rooms on one line share a level.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),
    ("app", "status"),
    ("serving",),
    ("routing",),
    ("lifecycle",),
    ("transport",),
    ("ops",),
    ("runtimes",),
    ("config",),
    ("contract",),
    ("errors", "__init__"),
]
LEVEL = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
TRAINER_MAY_IMPORT = {"contract", "runtimes", "config", "errors", "__init__"}  # the artifact's side, not the daemon
# fleet-report adds up many devices' trial counts and applies the device's own promotion rule to them
TRAINER_EXCEPTIONS = {"edge_agent.lifecycle.trial"}


def room(module: str) -> str:
    """`edge_agent.routing.cloud` -> `routing`; `edge_agent` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(source: str) -> set[str]:
    """Every `edge_agent` module a source imports (`from edge_agent import x` counts as `edge_agent.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edge_agent":
            if node.module == "edge_agent":
                found.update(f"edge_agent.{alias.name}" for alias in node.names if alias.name != "__version__")
                found.update("edge_agent" for alias in node.names if alias.name == "__version__")
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edge_agent")
    return found


def upward(here: str, source: str) -> list[str]:
    """The imports of `source` (a module in room `here`) that point at a higher room."""
    return sorted(m for m in imported(source) if LEVEL[room(m)] < LEVEL[here])


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(EDGE_AGENT.rglob("*.py")):
        parts = path.relative_to(EDGE_AGENT).with_suffix("").parts
        out.append((parts[0], path))
    return out


def test_every_room_is_known_and_documented() -> None:
    for here, path in modules():
        assert here in LEVEL, f"{path.relative_to(EDGE_AGENT.parent)} is in no room of LAYERS"
    for package in (p for p in EDGE_AGENT.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{package.name}/__init__.py must say what it owns and may import"


def test_no_import_runs_back_up() -> None:
    bad = {str(p.relative_to(EDGE_AGENT.parent)): upward(here, p.read_text()) for here, p in modules()}
    assert not {k: v for k, v in bad.items() if v}


def test_the_trainer_imports_only_the_artifact_side() -> None:
    for path in TRAINER.rglob("*.py"):
        rooms = {room(m) for m in imported(path.read_text()) - TRAINER_EXCEPTIONS}
        assert rooms <= TRAINER_MAY_IMPORT, f"{path.relative_to(TRAINER.parent)} imports {rooms - TRAINER_MAY_IMPORT}"


@pytest.mark.parametrize(
    ("here", "source", "expected"),
    [
        ("transport", "from edge_agent.serving.handler import Handler\n", ["edge_agent.serving.handler"]),
        ("contract", "def f():\n    from edge_agent.runtimes import onnx\n", ["edge_agent.runtimes"]),
        ("ops", "from edge_agent import app\n", ["edge_agent.app"]),
        ("serving", "from edge_agent.routing.router import Router\nfrom edge_agent import errors\n", []),
        ("routing", "from edge_agent.routing import policy\n", []),
    ],
)
def test_the_check_sees_an_arrow_up(here: str, source: str, expected: list[str]) -> None:
    assert upward(here, source) == expected
