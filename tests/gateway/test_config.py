"""Backend configuration and the gateway's settings: validation, TOML, environment, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from llmcloud.gateway import Backend, Gateway, InvalidBackends, default_backends
from llmcloud.gateway.config import hide_userinfo, keep_alive_wire_value
from llmcloud.settings import ConfigError, Settings, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's own config file and LLMCLOUD_* variables out of these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("LLMCLOUD_CONFIG", raising=False)
    monkeypatch.delenv("LLMCLOUD_GATEWAY_BACKENDS", raising=False)


def test_backend_defaults() -> None:
    backend = Backend(name="gpu-1", base_url="http://10.0.0.5:11434/")

    assert backend.kind == "ollama"
    assert backend.base_url == "http://10.0.0.5:11434"
    assert (backend.weight, backend.max_parallel, backend.enabled) == (1, 4, True)
    assert backend.api_key is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"base_url": "ftp://host"}, "invalid base_url 'ftp://host'"),
        ({"base_url": "127.0.0.1:11434"}, "invalid base_url '127.0.0.1:11434'"),
        ({"base_url": "http://host/?x=1"}, "remove the query"),
        ({"base_url": "http://user:pw@host"}, "remove the user name and password"),
        ({"base_url": "http://token@host"}, "put the key in api_key"),
        ({"base_url": "http://host:99999"}, "port 99999 is out of range, expected 1 to 65535"),
        ({"base_url": "http://host:0"}, "port 0 is out of range"),
        ({"base_url": "http://host:+80"}, "port '+80' is not a number"),
        ({"base_url": "http://host:1_0"}, "port '1_0' is not a number"),
        ({"base_url": "http://host:\u0661\u0668"}, "is not a number, expected digits 0-9"),
        ({"base_url": "http://[::1]: 80"}, "port ' 80' is not a number"),
        ({"name": "has space"}, "invalid backend name 'has space'"),
        ({"weight": 0}, "weight"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"kind": "vllm"}, "'ollama' or 'openai'"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
        ({"token": "x"}, "token"),
    ],
)
def test_backend_rejects_bad_field(fields: dict[str, object], expected: str) -> None:
    values: dict[str, object] = {"name": "gpu-1", "base_url": "http://127.0.0.1:1"}
    values.update(fields)

    with pytest.raises(ValidationError) as caught:
        Backend.model_validate(values)

    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@host:1/v1", "http://***@host:1/v1"),
        ("http:/\\user:s3cret@host", "http:***@host"),
        ("http://host/?token=s3cret#top", "http://host/?***#top"),
        ("http://host:11434", "http://host:11434"),
    ],
)
def test_hide_userinfo_hides_secrets(url: str, shown: str) -> None:
    assert hide_userinfo(url) == shown


def test_openai_base_url_may_end_in_v1() -> None:
    backend = Backend(name="vllm", kind="openai", base_url="https://gpu.internal:8000/v1")

    assert backend.api_base_url() == "https://gpu.internal:8000"


def test_ollama_base_url_keeps_its_path() -> None:
    backend = Backend(name="ollama", base_url="https://proxy.internal/ollama")

    assert backend.api_base_url() == "https://proxy.internal/ollama"


def test_unreadable_ca_bundle_is_rejected(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    backend = Backend(name="vllm", base_url="https://127.0.0.1:1", ca_bundle=bundle)

    with pytest.raises(InvalidBackends, match="cannot load the CA bundle"):
        Gateway([backend])


@pytest.mark.parametrize(
    ("keep_alive", "sent"),
    [("5m", "5m"), ("1h30m", "1h30m"), ("300", 300), ("-1", -1), ("0", 0), ("2.5", 2.5)],
)
def test_keep_alive_wire_value(keep_alive: str, sent: str | int | float) -> None:
    assert keep_alive_wire_value(keep_alive) == sent


def test_settings_read_backends_from_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "llmcloud.toml"
    config.write_text(
        "gateway_keep_alive = '10m'\n"
        "[[gateway_backends]]\n"
        "name = 'gpu-1'\n"
        "base_url = 'http://127.0.0.1:11434'\n"
        "weight = 2\n"
        "[[gateway_backends]]\n"
        "name = 'vllm'\n"
        "kind = 'openai'\n"
        "base_url = 'http://127.0.0.1:8000/v1'\n"
        "api_key = 'sk-from-toml'\n"
    )
    monkeypatch.setenv("LLMCLOUD_CONFIG", str(config))

    settings = load_settings()

    backends = settings.gateway_backends
    assert backends is not None
    assert [backend.name for backend in backends] == ["gpu-1", "vllm"]
    assert backends[0].weight == 2
    assert backends[1].kind == "openai"
    assert backends[1].api_key == SecretStr("sk-from-toml")
    assert settings.gateway_keep_alive == "10m"


def test_settings_read_backends_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLMCLOUD_GATEWAY_BACKENDS",
        '[{"name": "gpu-1", "base_url": "http://127.0.0.1:11434", "max_parallel": 8}]',
    )

    backends = load_settings().gateway_backends

    assert backends is not None
    assert backends[0].max_parallel == 8


def test_settings_error_hides_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLMCLOUD_GATEWAY_BACKENDS",
        '[{"base_url": "http://127.0.0.1:11434", "api_key": "sk-very-secret"}]',
    )

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "gateway_backends[0].name" in str(caught.value)
    assert "sk-very-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["http://user:s3cretpw@127.0.0.1:11434", "http://user:s3cretpw@127.0.0.1:99999"]
)
def test_settings_error_hides_password_in_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("LLMCLOUD_GATEWAY_BACKENDS", f'[{{"name": "gpu-1", "base_url": "{url}"}}]')

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "gateway_backends[0].base_url" in str(caught.value)
    assert "http://***@127.0.0.1" in str(caught.value)
    assert "s3cretpw" not in str(caught.value)


def test_settings_error_hides_api_key_of_malformed_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_GATEWAY_BACKENDS", '{"name": "a", "api_key": "sk-very-secret"}')

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "gateway_backends" in str(caught.value)
    assert "sk-very-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("gateway_keep_alive", "soon"),
        ("gateway_health_interval", "0"),
        ("gateway_max_queue_per_model", "-1"),
        ("gateway_first_token_timeout", "-5"),
    ],
)
def test_settings_reject_bad_gateway_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"LLMCLOUD_{name.upper()}", value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert name in str(caught.value)


def test_default_backend_is_local_engine() -> None:
    settings = Settings(
        engine_url="http://127.0.0.1:12345", engine_token="engine-secret", engine_num_parallel=3
    )

    (backend,) = default_backends(settings)

    assert backend.kind == "ollama"
    assert backend.base_url == "http://127.0.0.1:12345"
    assert backend.api_key == SecretStr("engine-secret")
    assert backend.max_parallel == 3


def test_gateway_from_settings_uses_gateway_values() -> None:
    settings = Settings(gateway_health_interval=7.5, gateway_first_token_timeout=30)

    gateway = Gateway.from_settings(settings)

    assert gateway.health_interval == 7.5
    assert gateway.first_token_timeout == 30
    assert [backend.name for backend in gateway.status().backends] == ["engine"]


def test_configuration_doc_lists_gateway_settings() -> None:
    text = DOCS.read_text()

    for name in Settings.model_fields:
        if name.startswith("gateway_"):
            assert f"`{name}`" in text, f"{name} is missing from docs/configuration.md"
