import json
import os
from pathlib import Path

import pytest

from edge_agent.config.models_file import load_models
from edge_agent.config.settings import load_settings
from edge_agent.contract import signing
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


def test_feedback_is_bounded_in_bytes_by_default_and_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().feedback_max_bytes == 16 * 1024 * 1024
    monkeypatch.setenv("EDGE_AGENT_FEEDBACK_MAX_BYTES", "65536")
    assert load_settings().feedback_max_bytes == 65536
    monkeypatch.setenv("EDGE_AGENT_FEEDBACK_MAX_BYTES", "100")  # not even one row would fit
    with pytest.raises(ConfigError, match="feedback_max_bytes"):
        load_settings()


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


@pytest.mark.parametrize("key", ["empty", "blank", "missing", "a folder", "a private key", "an hmac key"])
def test_an_unusable_trusted_key_is_a_config_error_not_a_skipped_check(
    key: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    """A key that cannot be read would verify nothing: the agent must refuse to start, naming it."""
    path = tmp_path / "fleet.pub"
    if key in ("empty", "blank", "an hmac key"):
        path.write_text({"empty": "", "blank": " \n\t\n", "an hmac key": "s3cret-fleet-key\n"}[key])
    elif key == "a folder":
        path.mkdir()
    elif key == "a private key":
        private, _ = signing.keygen(tmp_path / "keys")
        path = private
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = {**os.environ, "EDGE_AGENT_TRUSTED_KEYS": json.dumps([str(path)])}
    for verb in ("check", "run"):
        result = run_cli(verb, "--models", str(models), "--port", str(free_port()), env=env)
        assert result.returncode == EX_CONFIG, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "trusted_keys" in lines[0] and str(path) in lines[0], lines


def test_the_retired_hmac_setting_is_refused_saying_what_replaces_it(tmp_path: Path) -> None:
    (tmp_path / "fleet.key").write_text("s3cret\n")
    env = {**os.environ, "EDGE_AGENT_SIGNING_KEY_FILE": str(tmp_path / "fleet.key")}
    result = run_cli("check", "--settings-only", env=env)
    assert result.returncode == EX_CONFIG
    assert "HMAC fleet key is retired" in result.stderr and "trusted_keys" in result.stderr


def cloud_file(tmp_path: Path, url: str, *extra: str) -> Path:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("\n".join(["cloud:", f"  base_url: {url}", "  model: teacher", *extra, ""]))
    return cfg


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1",
        "http://192.168.1.5:8000/v1",
        "http://127.0.0.1.nip.io/v1",
        "http://127.0.0.1:80@evil.example/v1",  # the host is evil.example
        "http://localhost.evil.example/v1",
        "http://127.1/v1",  # not a canonical address: refused rather than guessed
    ],
)
def test_plain_http_to_a_remote_cloud_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(cloud_file(tmp_path, url))
    [line] = info.value.problems
    assert "cloud" in line and "base_url" in line and "allow_insecure_http" in line
    assert "80@" not in line  # user info in the URL is never repeated


def test_plain_http_is_one_problem_among_all(tmp_path: Path) -> None:
    cfg = cloud_file(tmp_path, "http://api.example.com/v1")
    cfg.write_text(cfg.read_text() + "threads: 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert len(info.value.problems) == 2 and any("base_url" in line for line in info.value.problems)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "http://127.0.0.1:8080/v1",
        "http://127.8.9.10/v1",
        "http://[::1]:8080/v1",
        "http://[::ffff:127.0.0.1]:8080/v1",
        "http://localhost:11434/v1",
        "http://LOCALHOST/v1",
    ],
)
def test_https_and_loopback_are_allowed(tmp_path: Path, url: str) -> None:
    cloud = load_settings(cloud_file(tmp_path, url)).cloud
    assert cloud is not None and cloud.base_url == url and not cloud.allow_insecure_http


def test_allow_insecure_http_lets_plain_http_through(tmp_path: Path) -> None:
    cloud = load_settings(cloud_file(tmp_path, "http://192.168.1.5:8000/v1", "  allow_insecure_http: true")).cloud
    assert cloud is not None and cloud.allow_insecure_http


def test_check_refuses_plain_http_to_a_remote_cloud_and_exits_78(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(cloud_file(tmp_path, "http://api.example.com/v1")))
    assert result.returncode == EX_CONFIG and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "cloud" in line and "base_url" in line and "allow_insecure_http" in line
    cfg = cloud_file(tmp_path, "http://api.example.com/v1", "  allow_insecure_http: true")
    result = run_cli("check", "--config", str(cfg), "--models", str(tmp_path / "none.yaml"))
    assert result.returncode == EX_CONFIG and "base_url" not in result.stderr  # only the missing models file


def test_a_base_url_httpx_cannot_parse_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(cloud_file(tmp_path, "http://[::1/v1"))
    [line] = info.value.problems
    assert "cloud.base_url" in line and "not a valid URL" in line


def test_a_state_folder_the_agent_cannot_write_is_one_line_and_78(tmp_path: Path, tiny_artifact: Path) -> None:
    """Before: a traceback and exit 1, which systemd restarts for ever (issue 23)."""
    (tmp_path / "a-file").write_text("")
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(tmp_path / "a-file" / "state")}
    result = run_cli("run", "--models", str(models), env=env)
    assert result.returncode == EX_CONFIG, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "must be able to write there" in result.stderr


def test_home_assistant_discovery_is_off_by_default_and_set_by_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().homeassistant.discovery is False
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("homeassistant:\n  discovery: true\n  prefix: ha\n")
    assert (load_settings(cfg).homeassistant.discovery, load_settings(cfg).homeassistant.prefix) == (True, "ha")
    monkeypatch.setenv("EDGE_AGENT_HOMEASSISTANT__PREFIX", "hass")
    assert load_settings(cfg).homeassistant.prefix == "hass"


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("home/assistant", "holds a /"),
        ("", "is empty"),
        ("ha+", "wildcard"),
        ("#", "wildcard"),
        ("$SYS", "starts with \\$"),
        ("ha\x00", "U\\+0000"),
    ],
)
def test_a_discovery_prefix_that_is_not_one_topic_level_is_refused(tmp_path: Path, prefix: str, problem: str) -> None:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"homeassistant": {"discovery": True, "prefix": prefix}}))
    cfg = cfg.rename(tmp_path / "agent.yaml")  # JSON is YAML
    with pytest.raises(ConfigError, match=rf"homeassistant\.prefix: .*{problem}"):
        load_settings(cfg)


def test_home_assistant_settings_refuse_unknown_keys_and_a_state_flood(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("homeassistant:\n  discovery: true\n  discovery_prefix: ha\n  state_s: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert any("homeassistant.discovery_prefix" in p for p in info.value.problems)
    assert any("homeassistant.state_s" in p and "at least 1 s" in p for p in info.value.problems)
