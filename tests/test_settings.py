"""The settings table: sources, errors, secrets, and the generated documentation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app
from llmcloud.cli.config import render_configuration_doc
from llmcloud.settings import CONFIG_ENV, ConfigError, Settings, load_settings

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_configuration_doc_matches_table() -> None:
    assert DOC.read_text() == render_configuration_doc(), (
        "docs/configuration.md is out of date; run `llmcloud config docs > docs/configuration.md`"
    )


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    field = Settings.model_fields[name]
    assert field.description, f"setting {name} has no help text"
    assert f"`LLMCLOUD_{name.upper()}`" in DOC.read_text()


def test_environment_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_PORT", "12000")
    assert load_settings().engine_port == 12000


def test_toml_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text('engine_keep_alive = "10m"\nengine_num_parallel = 3\n')
    monkeypatch.setenv(CONFIG_ENV, str(config))
    settings = load_settings()
    assert settings.engine_keep_alive == "10m"
    assert settings.keep_alive_seconds == 600
    assert settings.engine_num_parallel == 3


def test_environment_wins_over_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text("engine_num_parallel = 3\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("LLMCLOUD_ENGINE_NUM_PARALLEL", "5")
    assert load_settings().engine_num_parallel == 5


def test_invalid_value_names_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_PORT", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "LLMCLOUD_ENGINE_PORT" in str(caught.value)
    assert "'abc'" in str(caught.value)


def test_unknown_toml_key_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text("engine_prot = 1\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "engine_prot" in str(caught.value)


def test_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "absent.toml" in str(caught.value)


def test_invalid_keep_alive_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_KEEP_ALIVE", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "engine_keep_alive" in str(caught.value)


def test_config_show_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_TOKEN", "very-secret-token")
    result = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "very-secret-token" not in result.output
    assert "engine_token" in result.output


def test_config_show_piped_keeps_long_values(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://backups.example.org/" + "a" * 120
    monkeypatch.setenv("LLMCLOUD_PUBLIC_URL", url)

    result = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "80"})

    line = next(line for line in result.output.splitlines() if line.startswith("public_url "))
    assert result.exit_code == 0
    assert line.split() == ["public_url", "LLMCLOUD_PUBLIC_URL", url]
    assert "…" not in result.output


def test_secret_setting_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_TOKEN", "very-secret-token")
    assert "very-secret-token" not in repr(load_settings())


def test_config_show_reports_invalid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_NUM_PARALLEL", "0")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "engine_num_parallel" in result.output


def test_empty_token_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_TOKEN", "")
    assert load_settings().engine_token is None


def test_backend_list_error_names_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_GATEWAY_BACKENDS", '[{"name": "a"}]')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "gateway_backends[0].base_url" in str(caught.value)


def run_llmcloud(
    tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed `llmcloud` command in a clean environment with a home of its own."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LLMCLOUD_") and not key.startswith("XDG_")
    }
    clean.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="200")
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "llmcloud", *args],
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )


def test_config_show_names_unknown_toml_key(tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text('engine_prot = 1\nengine_token = "very-secret-token"\n')

    result = run_llmcloud(tmp_path, {CONFIG_ENV: str(config)}, "config", "show")

    assert result.returncode == 2
    assert f"unknown setting 'engine_prot' in the config file {config}" in result.stderr
    assert "remove it or fix the spelling" in result.stderr
    assert "engine_port" in result.stderr
    assert "LLMCLOUD_ENGINE_PROT" not in result.stderr
    assert "very-secret-token" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_config_show_names_toml_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text("engine_port = 8000\nweb_port = \n")

    result = run_llmcloud(tmp_path, {CONFIG_ENV: str(config)}, "config", "show")

    assert result.returncode == 2
    assert f"invalid TOML in the config file {config}" in result.stderr
    assert "line 2, column 12" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_names_toml_file_of_invalid_value(tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text('web_port = "http"\n')

    result = run_llmcloud(tmp_path, {CONFIG_ENV: str(config)}, "config", "show")

    assert result.returncode == 2
    assert f"setting web_port (config file {config}) = 'http'" in result.stderr


def test_config_show_explains_invalid_json_env(tmp_path: Path) -> None:
    result = run_llmcloud(tmp_path, {"LLMCLOUD_BACKUP_TARGETS": "not a list"}, "config", "show")

    assert result.returncode == 2
    assert "LLMCLOUD_BACKUP_TARGETS" in result.stderr
    assert "must be JSON" in result.stderr
    assert """LLMCLOUD_BACKUP_TARGETS='["first", "second"]'""" in result.stderr
    assert "EnvSettingsSource" not in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_json_env_shows_item_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_AUTH_OIDC_PROVIDERS", "[{")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert '[{"name": "...", "issuer": "...", "client_id": "..."}]' in str(caught.value)


def test_invalid_json_env_hides_raw_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_GATEWAY_BACKENDS", '[{"name": "a", "api_key": "very-secret-key"')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "LLMCLOUD_GATEWAY_BACKENDS: it must be JSON" in str(caught.value)
    assert "very-secret-key" not in str(caught.value)
