"""What a device install may hold: the heavy packages it must never pull or import, checked in any interpreter."""

from __future__ import annotations

import json
import subprocess

HEAVY = frozenset({"torch", "transformers", "peft", "optimum", "accelerate", "bitsandbytes"})

# argv[1:]: optional packages this install lacks; a module needing one is compiled (its syntax) instead
_IMPORT_ALL = f"""
import importlib.util, json, pkgutil, sys, edge_agent
mods = [m.name for m in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.')]
compiled = []
for name in mods:
    if name == 'edge_agent.__main__':
        continue
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in sys.argv[1:]:
            raise
        path = importlib.util.find_spec(name).origin
        compile(open(path, encoding='utf-8').read(), path, 'exec')
        compiled.append(name)
bad = sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules)
assert not bad, bad
assert len(mods) > 10, mods
print(json.dumps(compiled))
"""


def import_every_module(python: str, lacking: tuple[str, ...] = ()) -> list[str]:
    """Import each edge_agent module with `python`; fails when one breaks or loads a heavy package.

    Returns the modules only compiled because they need a package in `lacking` (an extra not installed)."""
    done = subprocess.run([python, "-c", _IMPORT_ALL, *lacking], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))
