"""The example inventory (ansible/inventory/example) as Ansible reads it: each device group gets its extras."""

from __future__ import annotations

import json
from pathlib import Path

from tests.deploy.ansible.runner import tool


def test_pis_install_onnx_and_jetsons_onnx_and_gguf(tmp_path: Path) -> None:
    done = tool(tmp_path, "ansible-inventory", "-i", "inventory/example", "--list", timeout=120)
    assert done.returncode == 0, done.stderr
    hostvars = json.loads(done.stdout)["_meta"]["hostvars"]
    extras = {host: variables["edge_agent_extras"] for host, variables in hostvars.items()}
    assert extras == {"pi-kitchen.local": "onnx", "pi-hall.local": "onnx", "jetson-garage.local": "onnx,gguf"}
    assert all(v["edge_agent_registry_url"].startswith("https://") for v in hostvars.values())
    assert all(v["edge_agent_trusted_keys"] for v in hostvars.values())
