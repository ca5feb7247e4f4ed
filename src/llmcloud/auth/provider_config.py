"""Types of the login settings: OpenID Connect providers, base URLs, trusted proxy addresses."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

# Provider names appear in URLs (/auth/NAME/login) and in the identities table (32 characters).
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
RESERVED_PROVIDER_NAMES = frozenset({"github"})
DEFAULT_OIDC_SCOPES = ("openid", "email", "profile")


class OidcProvider(BaseModel):
    """One OpenID Connect provider, such as Keycloak, Google, Entra ID or LifeScience AAI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name used in URLs and the identities table.")
    display_name: str = Field("", description="Label of the log-in button; unset uses the name.")
    issuer: str = Field(description="Issuer URL, or the full URL of its discovery document.")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_OIDC_SCOPES))
    groups_claim: str = "groups"
    admin_groups: list[str] = Field(default_factory=list)
    user_groups: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not PROVIDER_NAME.match(value) or value in RESERVED_PROVIDER_NAMES:
            raise ValueError(
                f"invalid provider name {value!r}; expected 1 to 32 lower-case letters, digits "
                "or '-', starting with a letter or digit, and not 'github'"
            )
        return value

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"invalid issuer {value!r}; expected an http:// or https:// URL such as "
                "https://keycloak.example.org/realms/main"
            )
        return str(url).rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _require_openid_scope(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError(f"scopes {value!r} lack 'openid', which OpenID Connect requires")
        return value

    @property
    def discovery_url(self) -> str:
        if self.issuer.endswith("/.well-known/openid-configuration"):
            return self.issuer
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def label(self) -> str:
        return self.display_name or self.name


def _hide_client_secrets(value: Any) -> Any:
    """Wrap raw client_secret strings in SecretStr, so that a validation error never prints one."""
    if isinstance(value, list):
        return [_hide_client_secrets(item) for item in value]
    if isinstance(value, dict) and isinstance(value.get("client_secret"), str):
        return {**value, "client_secret": SecretStr(value["client_secret"])}
    return value


def _check_unique_names(value: list[OidcProvider] | None) -> list[OidcProvider] | None:
    names = [provider.name for provider in value or []]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"provider names {duplicates!r} appear more than once; make them unique")
    return value


OidcProviderList = Annotated[
    list[OidcProvider] | None,
    BeforeValidator(_hide_client_secrets),
    AfterValidator(_check_unique_names),
]


def _check_networks(value: list[str]) -> list[str]:
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"invalid proxy address {entry!r}; expected an IP address such as 127.0.0.1 "
                "or a network such as 10.0.0.0/8"
            ) from None
    return value


TrustedProxyList = Annotated[list[str], AfterValidator(_check_networks)]


def _check_base_url(value: str) -> str:
    url = httpx.URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError(
            f"invalid base URL {value!r}; expected an http:// or https:// URL with a host and "
            "no query, such as https://github.example.org"
        )
    return str(url).rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_check_base_url)]
