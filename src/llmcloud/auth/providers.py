"""The login providers configured in the settings, and their redirect URIs.

GitHub appears when both its client id and secret are set; every entry of
`auth_oidc_providers` is one OpenID Connect provider. A redirect URI is
always `<public_url>/auth/<name>/callback`, built from the setting and never
from request headers, so a forged Host header cannot send a code elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmcloud.auth.errors import NotFound
from llmcloud.auth.provider_config import OidcProvider
from llmcloud.db.errors import ServiceError, quote_value
from llmcloud.settings import Settings

GITHUB = "github"
GITHUB_SCOPES = ("read:user", "user:email")
GITHUB_ORG_SCOPE = "read:org"


class ProviderNotConfigured(ServiceError):
    """A provider log-in needs a setting that is missing, such as public_url."""

    status_code = 503


@dataclass(frozen=True)
class LoginProvider:
    """A provider as the log-in flow uses it; `oidc` is set for OpenID Connect providers."""

    name: str
    kind: Literal["github", "oidc"]
    label: str
    client_id: str
    client_secret: str | None
    scopes: tuple[str, ...]
    oidc: OidcProvider | None = None


def configured_providers(settings: Settings) -> list[LoginProvider]:
    """Return the configured providers: GitHub first, then the OIDC providers in order."""
    providers = []
    github = _github_provider(settings)
    if github is not None:
        providers.append(github)
    for oidc in settings.auth_oidc_providers or []:
        secret = oidc.client_secret.get_secret_value() if oidc.client_secret else None
        providers.append(
            LoginProvider(
                name=oidc.name,
                kind="oidc",
                label=oidc.label,
                client_id=oidc.client_id,
                client_secret=secret,
                scopes=tuple(oidc.scopes),
                oidc=oidc,
            )
        )
    return providers


def find_provider(settings: Settings, name: str) -> LoginProvider:
    """Return the provider called `name`, or raise NotFound listing the configured ones."""
    providers = configured_providers(settings)
    for provider in providers:
        if provider.name == name:
            return provider
    names = ", ".join(provider.name for provider in providers) or "none"
    raise NotFound(f"login provider {quote_value(name)} is not configured; configured: {names}")


def redirect_uri(settings: Settings, name: str) -> str:
    """Return the callback URL to register at provider `name`, built from public_url."""
    if settings.public_url is None:
        raise ProviderNotConfigured(
            "public_url is not set, so no redirect URI can be built for login providers; "
            "set LLMCLOUD_PUBLIC_URL to the URL at which users reach this server"
        )
    return f"{settings.public_url}/auth/{name}/callback"


def _github_provider(settings: Settings) -> LoginProvider | None:
    secret = settings.auth_github_client_secret
    if not settings.auth_github_client_id or secret is None:
        return None
    scopes: tuple[str, ...] = GITHUB_SCOPES
    if settings.auth_github_allowed_orgs or settings.auth_github_allowed_teams:
        scopes = (*GITHUB_SCOPES, GITHUB_ORG_SCOPE)
    return LoginProvider(
        name=GITHUB,
        kind="github",
        label=settings.auth_github_display_name,
        client_id=settings.auth_github_client_id,
        client_secret=secret.get_secret_value(),
        scopes=scopes,
    )
