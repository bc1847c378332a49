"""The trainer's two paths mirror each other over shared pieces (ARCHITECTURE.md, "The trainer").

Read from the sources (nothing imported): a stage imports earlier stages of its own path and the shared
modules only, through helpers too; neither path imports the other; shared modules import neither path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
STAGES = ("base", "data", "recipe", "finetune", "merge", "export", "evaluate", "publish", "build")
PATHS = ("encoder", "causal")
ENTRY_POINTS = {"cli", "tiny"}  # they run stages; no stage imports them


def imports(module: Path) -> set[str]:
    """Every `trainer.*` module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("trainer"))
    return {name for name in found if (TRAINER.parent / (name.replace(".", "/") + ".py")).is_file()}


def closure(path: str, name: str) -> set[str]:
    """The modules of `path` that `trainer.{path}.{name}` reaches, directly or through its helpers."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        here = todo.pop()
        for target in imports(TRAINER / path / f"{here}.py"):
            inner = target.removeprefix(f"trainer.{path}.")
            if inner != target and inner not in seen:
                seen.add(inner)
                todo.append(inner)
    return seen


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_have_the_same_stage_files(path: str) -> None:
    expected = [s for s in STAGES if s != "merge" or path == "causal"]
    assert [s for s in STAGES if (TRAINER / path / f"{s}.py").is_file()] == expected


@pytest.mark.parametrize("path", PATHS)
def test_a_stage_reaches_no_later_stage(path: str) -> None:
    for i, name in enumerate(STAGES):
        if (TRAINER / path / f"{name}.py").is_file():
            reached = closure(path, name)
            assert not reached & {*STAGES[i:], *ENTRY_POINTS}, f"trainer.{path}.{name} reaches {sorted(reached)}"


def test_no_path_imports_the_other_and_shared_modules_neither() -> None:
    for module in TRAINER.rglob("*.py"):
        where = module.relative_to(TRAINER).parts
        others = [p for p in PATHS if p != where[0]] if len(where) > 1 else list(PATHS)
        if where == ("cli.py",):
            continue  # the command line registers both paths' verbs
        bad = [m for m in imports(module) if any(m.startswith(f"trainer.{p}") for p in others)]
        assert not bad, f"{module.relative_to(TRAINER.parent)} imports {bad}"
