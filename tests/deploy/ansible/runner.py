"""ansible-playbook as an operator runs it, against localhost (`connection: local`), kept inside a test's tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
ANSIBLE = ROOT / "ansible"
ROLE = ANSIBLE / "roles" / "edge_agent"
BIN = Path(sys.executable).parent  # ansible-playbook and ansible-lint come with the dev install


def ansible_env(tmp: Path) -> dict[str, str]:
    """Environment for ansible: its home, temp folders and facts cache in `tmp`; no colour, no cowsay."""
    home = tmp / "ansible-home"
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_NOCOWS": "1",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_FORKS": "5",
        "ANSIBLE_PIPELINING": "True",
    }


def tool(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """An ansible command-line tool (ansible-inventory, ansible-lint) run in ansible/, never raising."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        cwd=ANSIBLE,
        env=ansible_env(tmp),
        timeout=timeout,
        check=False,
    )


def local_inventory(
    path: Path, groups: dict[str, dict[str, dict[str, Any]]], fleet_vars: dict[str, Any] | None = None
) -> Path:
    """A YAML inventory of local hosts: {group: {host: vars}}, all under `edge_devices` (with `fleet_vars`),
    run by this Python as the current user (no become: it would need sudo)."""
    children = {group: {"hosts": hosts} for group, hosts in groups.items()}
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    doc = {"edge_devices": {"vars": {**local, **(fleet_vars or {})}, "children": children}}
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path


def playbook(
    tmp: Path, play: Path, inventory: Path, extra: dict[str, Any] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `ansible-playbook` and return what it did (never raises on a failed play: tests look at it)."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(play)]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=ansible_env(tmp), cwd=ANSIBLE, timeout=timeout, check=False
    )


def recap(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
    out: dict[str, dict[str, int]] = {}
    lines = done.stdout.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")), default=len(lines))
    for line in lines[start + 1 :]:
        if ":" not in line or "=" not in line:
            continue
        host, _, counts = line.partition(":")
        out[host.strip()] = {key: int(value) for key, value in (pair.split("=") for pair in counts.split())}
    return out


_TASK = re.compile(r"^TASK \[(?:[\w.]+ : )?(.*)\] \*+$")
_RESULT = re.compile(r"^(ok|changed|skipping|fatal|failed): \[([^\]]+)\]")


def results(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    """(task name, status, host) in the order the play printed them (a looped task: once per item)."""
    out: list[tuple[str, str, str]] = []
    task = ""
    for line in done.stdout.splitlines():
        if found := _TASK.match(line):
            task = found.group(1)
        elif found := _RESULT.match(line):
            out.append((task, found.group(1), found.group(2)))
    return out
