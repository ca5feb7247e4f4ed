"""OpenID Connect discovery and ID-token validation.

An ID token is accepted only when its signature verifies against a key from
the provider's JWKS, with an asymmetric algorithm that the provider
announces. Its claims must match too: `iss` equals the discovered issuer,
`aud` contains our client id (and `azp` equals it when there are several
audiences), `exp` lies in the future, and `nonce` equals the one sent with
this log-in. A clock difference of up to LEEWAY_SECONDS is tolerated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from llmcloud.auth.login_errors import LoginFailed, bad_gateway, unauthorized
from llmcloud.auth.provider_config import OidcProvider

log = logging.getLogger("llmcloud.auth")

LEEWAY_SECONDS = 60
DISCOVERY_TTL_SECONDS = 3600
# HS* would make the client secret a signing key; "none" is no signature at all.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]
    fetched_at: float


_discovered: dict[str, Discovery] = {}


def discover(provider: OidcProvider, client: OAuth2Client) -> Discovery:
    """Return the provider's discovery document, fetched at most once an hour."""
    cached = _discovered.get(provider.discovery_url)
    if cached is not None and time.monotonic() - cached.fetched_at < DISCOVERY_TTL_SECONDS:
        return cached
    document = fetch_json(client, provider.discovery_url, "discovery document")
    try:
        announced = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        discovery = Discovery(
            issuer=str(document["issuer"]),
            authorization_endpoint=str(document["authorization_endpoint"]),
            token_endpoint=str(document["token_endpoint"]),
            jwks_uri=str(document["jwks_uri"]),
            userinfo_endpoint=document.get("userinfo_endpoint"),
            algorithms=tuple(alg for alg in announced if alg in ASYMMETRIC_ALGORITHMS),
            fetched_at=time.monotonic(),
        )
    except (KeyError, AttributeError) as exc:
        raise bad_gateway(
            "discovery_invalid",
            f"the discovery document at {provider.discovery_url} lacks {exc}; check the "
            "provider's issuer setting",
        ) from None
    _check_issuer(provider, discovery.issuer)
    _discovered[provider.discovery_url] = discovery
    return discovery


def _check_issuer(provider: OidcProvider, discovered: str) -> None:
    """Require the discovered issuer to equal the configured one, so that keys of a substituted
    discovery document are never trusted."""
    if provider.issuer == provider.discovery_url:
        return
    if discovered.rstrip("/") != provider.issuer:
        raise bad_gateway(
            "discovery_issuer_mismatch",
            f"the discovery document of {provider.issuer} names the issuer {discovered!r}; "
            "set the provider's issuer to exactly that URL",
        )


def validate_id_token(
    id_token: str,
    *,
    jwks: dict[str, Any],
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: tuple[str, ...],
    now: int | None = None,
) -> dict[str, Any]:
    """Validate an ID token by the rules in the module docstring and return its claims.

    Raises LoginFailed (401) with reason `id_token_bad_signature`,
    `id_token_wrong_issuer`, `id_token_wrong_audience`, `id_token_wrong_nonce`,
    `id_token_expired` or `id_token_invalid`.
    """
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        token = jwt.decode(id_token, keys, algorithms=list(algorithms))
    except BadSignatureError:
        raise _invalid("id_token_bad_signature", "its signature does not verify") from None
    except (JoseError, ValueError) as exc:
        raise _invalid("id_token_invalid", f"it cannot be decoded ({exc})") from None

    claims = token.claims
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        sub={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise _invalid("id_token_expired", "it has expired") from None
    except (InvalidClaimError, MissingClaimError) as exc:
        raise _claim_error(exc.claim) from None
    _check_authorized_party(claims, client_id)
    return claims


def fetch_json(
    client: OAuth2Client, url: str, resource: str, *, with_token: bool = False
) -> dict[str, Any]:
    """GET a JSON object from a provider, turning failures into 502 LoginFailed.

    `with_token` sends the access token that the client fetched.
    """
    response = get_from_provider(client, url, resource, with_token=with_token)
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise bad_gateway(
            f"{_code(resource)}_invalid", f"the provider's {resource} at {url} is not JSON"
        )
    return document


def get_from_provider(
    client: OAuth2Client,
    url: str,
    resource: str,
    *,
    with_token: bool = False,
    not_found_ok: bool = False,
) -> httpx2.Response:
    """GET from a provider; timeouts, network errors and error statuses raise 502 LoginFailed.

    With `not_found_ok`, 403 and 404 come back as responses, for membership checks.
    """
    try:
        response: httpx2.Response = client.request("GET", url, withhold_token=not with_token)
    except httpx2.TimeoutException:
        raise bad_gateway(
            "provider_timeout", f"the login provider timed out ({resource}, {url})"
        ) from None
    except httpx2.HTTPError as exc:
        raise bad_gateway(
            "provider_unreachable", f"the login provider is unreachable ({resource}, {url}): {exc}"
        ) from None
    if not_found_ok and response.status_code in (403, 404):
        return response
    if response.status_code >= 400:
        raise bad_gateway(
            "provider_error_status",
            f"the login provider returned HTTP {response.status_code} for its {resource} ({url})",
        )
    return response


def _check_authorized_party(claims: dict[str, Any], client_id: str) -> None:
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise _claim_error("azp")


def _claim_error(claim: str) -> LoginFailed:
    reasons = {
        "iss": "id_token_wrong_issuer",
        "aud": "id_token_wrong_audience",
        "azp": "id_token_wrong_audience",
        "nonce": "id_token_wrong_nonce",
        "exp": "id_token_expired",
    }
    return _invalid(reasons.get(claim, "id_token_invalid"), f"its {claim!r} claim is wrong")


def _invalid(reason: str, detail: str) -> LoginFailed:
    log.warning("ID token rejected: %s", reason)
    return unauthorized(reason, f"the provider's ID token was rejected because {detail}")


def _code(resource: str) -> str:
    return resource.replace(" ", "_")
