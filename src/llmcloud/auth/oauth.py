"""The authorization code flow with GitHub and OpenID Connect providers, through Authlib.

Every log-in sends PKCE (S256) and a random `state`, and OIDC log-ins also
send a random `nonce`. The PKCE verifier and the nonce stay on the server in
PendingLogins, keyed by the state, and the browser carries only the state
in a signed cookie. A callback is accepted once: the state's entry is
removed when it is first used, so a replayed callback fails with
`state_unknown`, and a callback whose state differs from the cookie's
fails with `state_mismatch`. Entries expire after PENDING_LOGIN_SECONDS.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client

from llmcloud.auth.github import fetch_github_profile
from llmcloud.auth.identity_profile import ProviderProfile
from llmcloud.auth.login_errors import bad_gateway, bad_request, forbidden, unauthorized
from llmcloud.auth.oidc import discover, fetch_json, validate_id_token
from llmcloud.auth.pending_logins import PendingLogin, PendingLogins
from llmcloud.auth.providers import LoginProvider, redirect_uri
from llmcloud.settings import Settings

MAX_ERROR_LENGTH = 64


@dataclass(frozen=True)
class Authorization:
    """The provider URL for the browser, and the state that its cookie must carry back."""

    url: str
    state: str


def start_login(
    settings: Settings, provider: LoginProvider, pending: PendingLogins, next_path: str
) -> Authorization:
    """Build the provider's authorization URL and remember the log-in's verifier and nonce."""
    state = secrets.token_urlsafe(32)
    code_verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(32) if provider.kind == "oidc" else None

    with _oauth_client(settings, provider) as client:
        endpoint = _authorization_endpoint(settings, provider, client)
        extra = {"nonce": nonce} if nonce else {}
        url, _ = client.create_authorization_url(
            endpoint, state=state, code_verifier=code_verifier, **extra
        )
    pending.add(
        state,
        PendingLogin(
            provider=provider.name,
            code_verifier=code_verifier,
            nonce=nonce,
            next_path=next_path,
            created_at=time.monotonic(),
        ),
    )
    return Authorization(url=url, state=state)


def check_callback(
    params: dict[str, str], cookie_state: str | None, pending: PendingLogins, provider: str
) -> tuple[PendingLogin, str]:
    """Check a callback's parameters and return its pending log-in and the code.

    Raises LoginFailed for an error from the provider (403 for access_denied,
    else 400), and 400 for a missing, wrong or used state, a missing code or
    a missing PKCE verifier.
    """
    state = params.get("state")
    if not state:
        raise bad_request("state_missing", "the provider's redirect has no state parameter")
    if cookie_state is None or not secrets.compare_digest(state, cookie_state):
        raise bad_request(
            "state_mismatch", "the log-in's state does not match this browser's log-in cookie"
        )
    login = pending.take(state)
    if login is None or login.provider != provider:
        raise bad_request("state_unknown", "this log-in was already used or has expired")
    error = params.get("error")
    if error:
        raise _provider_error(error)
    code = params.get("code")
    if not code:
        raise bad_request("code_missing", "the provider's redirect has no authorization code")
    if not login.code_verifier:
        raise bad_request("pkce_verifier_missing", "the log-in has no PKCE code verifier")
    return login, code


def finish_login(
    settings: Settings, provider: LoginProvider, login: PendingLogin, code: str
) -> ProviderProfile:
    """Exchange the code for tokens and return the profile that the provider vouches for."""
    with _oauth_client(settings, provider) as client:
        if provider.kind == "github":
            _exchange_code(
                client, f"{settings.auth_github_url}/login/oauth/access_token", code, login
            )
            return fetch_github_profile(
                client,
                settings.auth_github_api_url,
                allowed_orgs=settings.auth_github_allowed_orgs,
                allowed_teams=settings.auth_github_allowed_teams,
            )
        return _finish_oidc(client, provider, login, code)


def _finish_oidc(
    client: OAuth2Client, provider: LoginProvider, login: PendingLogin, code: str
) -> ProviderProfile:
    assert provider.oidc is not None, "OIDC providers carry their settings"
    if login.nonce is None:
        raise bad_request("nonce_missing", "the log-in has no nonce to check the ID token with")
    discovery = discover(provider.oidc, client)
    token = _exchange_code(client, discovery.token_endpoint, code, login)
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise bad_gateway("id_token_missing", "the provider's token response has no ID token")
    jwks = fetch_json(client, discovery.jwks_uri, "JWKS")
    claims = validate_id_token(
        id_token,
        jwks=jwks,
        issuer=discovery.issuer,
        client_id=provider.client_id,
        nonce=login.nonce,
        algorithms=discovery.algorithms,
    )
    if "email" not in claims or provider.oidc.groups_claim not in claims:
        claims = _add_userinfo(client, discovery.userinfo_endpoint, claims)
    email = claims.get("email")
    return ProviderProfile(
        provider=provider.name,
        subject=str(claims["sub"]),
        username_hint=str(claims.get("preferred_username") or email or ""),
        email=email if isinstance(email, str) and email else None,
        email_verified=claims.get("email_verified") is True,
        groups=_groups_of(claims, provider.oidc.groups_claim),
    )


def _groups_of(claims: dict[str, Any], claim: str) -> tuple[str, ...] | None:
    """Return the groups claim as a tuple, or None when it is only referenced.

    A provider may send a claim as an aggregated or distributed claim, named
    in `_claim_names` and kept elsewhere (OpenID Connect Core 1.0, section
    5.6.2), as providers do for users in too many groups to fit a token.
    llmcloud does not fetch such claims, so their groups are unknown rather
    than empty.
    """
    groups = claims.get(claim)
    referenced = claims.get("_claim_names")
    if groups is None and isinstance(referenced, dict) and claim in referenced:
        return None
    if not isinstance(groups, list):
        return ()
    return tuple(str(group) for group in groups)


def _add_userinfo(
    client: OAuth2Client, endpoint: str | None, claims: dict[str, Any]
) -> dict[str, Any]:
    """Fill claims missing from the ID token from the userinfo response.

    Some providers return email and groups only there. The ID token's own
    claims win, because only they are signed. A userinfo response for
    another `sub` is rejected, because it describes another user.
    """
    if endpoint is None:
        return claims
    userinfo = fetch_json(client, endpoint, "userinfo", with_token=True)
    if userinfo.get("sub") != claims["sub"]:
        raise unauthorized(
            "userinfo_subject_mismatch",
            "the provider's userinfo response is about another user than its ID token",
        )
    return {**userinfo, **claims}


def _exchange_code(
    client: OAuth2Client, token_endpoint: str, code: str, login: PendingLogin
) -> dict[str, Any]:
    try:
        token = client.fetch_token(token_endpoint, code=code, code_verifier=login.code_verifier)
    except httpx2.TimeoutException:
        raise bad_gateway(
            "provider_timeout", f"the login provider timed out ({token_endpoint})"
        ) from None
    except httpx2.HTTPError as exc:
        raise bad_gateway(
            "provider_unreachable", f"the login provider is unreachable ({token_endpoint}): {exc}"
        ) from None
    except AuthlibBaseError as exc:
        raise bad_request(
            "code_rejected",
            f"the provider rejected the authorization code ({_short(exc.error)}); log in again",
        ) from None
    except ValueError:
        raise bad_gateway("token_invalid", "the provider's token response is not JSON") from None
    if "access_token" not in token:
        raise bad_request("code_rejected", "the provider returned no access token; log in again")
    return dict(token)


def _authorization_endpoint(
    settings: Settings, provider: LoginProvider, client: OAuth2Client
) -> str:
    if provider.kind == "github":
        return f"{settings.auth_github_url}/login/oauth/authorize"
    assert provider.oidc is not None
    return discover(provider.oidc, client).authorization_endpoint


def _oauth_client(settings: Settings, provider: LoginProvider) -> OAuth2Client:
    return OAuth2Client(
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        scope=" ".join(provider.scopes),
        redirect_uri=redirect_uri(settings, provider.name),
        code_challenge_method="S256",
        token_endpoint_auth_method=(
            "client_secret_post" if provider.kind == "github" else "client_secret_basic"
        ),
        timeout=settings.auth_provider_timeout,
        headers={"Accept": "application/json"},
        trust_env=False,
    )


def _provider_error(error: str) -> Exception:
    shown = _short(error)
    if error == "access_denied":
        return forbidden("provider_denied", f"the provider denied the log-in ({shown})")
    if error in ("login_required", "consent_required", "interaction_required"):
        return unauthorized("provider_error", f"the provider did not log you in ({shown})")
    return bad_request("provider_error", f"the provider returned an error ({shown})")


def _short(value: object) -> str:
    return repr(str(value)[:MAX_ERROR_LENGTH])
