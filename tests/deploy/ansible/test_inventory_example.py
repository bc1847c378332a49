"""The example inventory (ansible/inventory/example) as Ansible reads it: each device group gets its extras, and
builds llama.cpp for GGUF the way README's "Raspberry Pi" and "Jetson" sections tell a user to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy.ansible.runner import ROLE, ROOT, tool


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"### {title}\n", 1)[1].split("\n#", 1)[0]


def test_pis_install_onnx_and_jetsons_onnx_and_gguf(tmp_path: Path) -> None:
    done = tool(tmp_path, "ansible-inventory", "-i", "inventory/example", "--list", timeout=120)
    assert done.returncode == 0, done.stderr
    hostvars = json.loads(done.stdout)["_meta"]["hostvars"]
    extras = {host: variables["edge_agent_extras"] for host, variables in hostvars.items()}
    assert extras == {"pi-kitchen.local": "onnx", "pi-hall.local": "onnx", "jetson-garage.local": "onnx,gguf"}
    assert all(v["edge_agent_registry_url"].startswith("https://") for v in hostvars.values())
    assert all(v["edge_agent_trusted_keys"] for v in hostvars.values())


def test_the_role_builds_llama_cpp_as_the_readme_tells_a_pi_and_a_jetson_user(tmp_path: Path) -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    done = tool(tmp_path, "ansible-inventory", "-i", "inventory/example", "--host", "jetson-garage.local", timeout=120)
    assert done.returncode == 0, done.stderr
    jetson = json.loads(done.stdout)["edge_agent_gguf_build_env"]
    pi, jetson_readme = readme_section("Raspberry Pi"), readme_section("Jetson")
    assert f'CMAKE_ARGS="{defaults["edge_agent_gguf_build_env"]["CMAKE_ARGS"]}"' in pi
    assert f'CMAKE_ARGS="{jetson["CMAKE_ARGS"]}" CUDACXX={jetson["CUDACXX"]}' in jetson_readme
    assert "-DGGML_CUDA=on" in jetson["CMAKE_ARGS"]
    for section in (pi, jetson_readme):
        apt = re.search(r"apt-get install -y ((?:python3-venv )?build-essential[^\n]*)", section)
        assert apt and set(defaults["edge_agent_gguf_build_packages"]) <= set(apt.group(1).split()), section
