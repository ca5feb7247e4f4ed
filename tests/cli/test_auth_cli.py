"""`llmcloud auth providers`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmcloud.cli import app

OIDC = [{"name": "keycloak", "issuer": "https://kc.example.org/realms/main", "client_id": "llm"}]


@pytest.fixture
def provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLOUD_AUTH_GITHUB_CLIENT_ID", "github-id")
    monkeypatch.setenv("LLMCLOUD_AUTH_GITHUB_CLIENT_SECRET", "github-secret-value")
    monkeypatch.setenv("LLMCLOUD_AUTH_OIDC_PROVIDERS", json.dumps(OIDC))


def test_auth_providers_prints_redirect_uris(
    provider_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCLOUD_PUBLIC_URL", "https://chat.example.org/")
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 0, result.output
    assert "https://chat.example.org/auth/github/callback" in result.output
    assert "https://chat.example.org/auth/keycloak/callback" in result.output
    assert "github-secret-value" not in result.output


def test_auth_providers_needs_public_url(provider_env: None) -> None:
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 1
    assert "LLMCLOUD_PUBLIC_URL" in result.output


def test_auth_providers_without_providers() -> None:
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 0
    assert "No login provider is configured" in result.output


def test_auth_providers_rejects_duplicate_names(
    provider_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {**OIDC[0], "client_secret": "oidc-secret-value"}
    monkeypatch.setenv("LLMCLOUD_AUTH_OIDC_PROVIDERS", json.dumps([entry, entry]))
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 2
    assert "['keycloak'] appear more than once" in result.output
    assert "oidc-secret-value" not in result.output


def test_auth_providers_rejects_missing_openid_scope(
    provider_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {**OIDC[0], "scopes": ["email"]}
    monkeypatch.setenv("LLMCLOUD_AUTH_OIDC_PROVIDERS", json.dumps([entry]))
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 2
    assert "lack 'openid'" in result.output


def test_auth_providers_rejects_github_url_without_scheme(
    provider_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCLOUD_AUTH_GITHUB_API_URL", "api.github.com")
    result = CliRunner().invoke(app, ["auth", "providers"])
    assert result.exit_code == 2
    assert "invalid base URL 'api.github.com'" in result.output
