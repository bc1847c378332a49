import os
from pathlib import Path

import pytest

from edge_agent.config import load_models, load_settings
from edge_agent.errors import EX_CONFIG, ConfigError
from tests.support.agent import run_cli, write_models
from tests.support.broker import free_port


def test_settings_priority_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "from-file"\nthreads = 3\n[mqtt]\nhost = "file-host"\nport = 1884\n')
    monkeypatch.setenv("EDGE_AGENT_THREADS", "4")
    monkeypatch.setenv("EDGE_AGENT_MQTT__HOST", "env-host")
    s = load_settings(cfg, device_id="flag-id")
    assert (s.device_id, s.threads, s.mqtt.host) == ("flag-id", 4, "env-host")
    assert s.topic_prefix == "edge-agent/flag-id"


def test_settings_problems_all_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("threads: 0\nmax_inflight: -1\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert len(info.value.problems) == 3


def test_models_file_problems_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {name: a, path: x}\n  - {name: a, path: y}\n"
        "bindings:\n  - {topic: 's/#/x', model: a}\n  - {topic: 's/+', model: nope, output: 'r/{bad}'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_models(path)
    text = "\n".join(info.value.problems)
    assert "invalid topic filter" in text and "{bad}" in text
    path.write_text("models:\n  - {name: a, path: x}\n  - {name: a, path: y}\nbindings:\n  - {topic: s, model: b}\n")
    with pytest.raises(ConfigError) as info:
        load_models(path)
    assert len(info.value.problems) == 2


def test_check_reports_every_problem_and_exits_78(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: a, path: missing-a}\n  - {name: b, path: missing-b}\n")
    result = run_cli("check", "--models", str(models))
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "missing-a" in lines[0] and "missing-b" in lines[1]
    assert "Traceback" not in result.stderr


def test_broken_yaml_is_one_line_and_78(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models: [\n")
    for verb in ("check", "run"):
        result = run_cli(verb, "--models", str(models))
        assert result.returncode == EX_CONFIG, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "not valid yaml" in result.stderr


def test_help_for_every_command() -> None:
    for args in (
        ["--help"],
        ["run", "--help"],
        ["check", "--help"],
        ["classify", "--help"],
        ["models", "list", "--help"],
    ):
        assert run_cli(*args).returncode == 0


@pytest.mark.parametrize("key", ["empty", "blank", "missing", "a folder"])
def test_an_unusable_signing_key_is_a_config_error_not_a_skipped_check(
    key: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    """A blank key would verify nothing: the unsigned artifact must not pass as if no key were set."""
    path = tmp_path / "fleet.key"
    if key in ("empty", "blank"):
        path.write_text("" if key == "empty" else " \n\t\n")
    elif key == "a folder":
        path.mkdir()
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = {**os.environ, "EDGE_AGENT_SIGNING_KEY_FILE": str(path)}
    for verb in ("check", "run"):
        result = run_cli(verb, "--models", str(models), "--port", str(free_port()), env=env)
        assert result.returncode == EX_CONFIG, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "signing_key_file" in lines[0] and str(path) in lines[0], lines
