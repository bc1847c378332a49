"""ansible-lint on ansible/ with the production profile (ansible/.ansible-lint), offline: no galaxy, no network."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.ansible.runner import tool


def test_role_and_playbooks_pass_ansible_lint_production_profile(tmp_path: Path) -> None:
    done = tool(tmp_path, "ansible-lint", "--offline", "--nocolor")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output
