"""Cookies and request-origin checks of the web app.

The session cookie carries the random token from `llmcloud.auth.sessions`
plus an HMAC-SHA256 signature made with the session key in
`<data_dir>/secrets/session_key`. The database stores only the token's
hash, and the signature adds a second check: a cookie is used only when this
instance signed it. Because the key persists in the data dir, a restart keeps
every cookie valid. The cookie is HttpOnly and SameSite=Lax, and Secure when
the request arrived over HTTPS or `public_url` is an https URL.

A second signed cookie, `llmcloud_pending`, remembers which account waits
for approval, so that the waiting page can show when an admin approved it.
It grants nothing: the account still has to log in with its password.

Cross-site request forgery is stopped twice. A state-changing request whose
Origin header, or when that is absent its Referer, names another origin than
the app's own is rejected. Requests from a session must also carry the
session's CSRF token, in a form field or in the `X-CSRF-Token` header that
htmx sends. The app's own origin is that of `public_url` when set, and
otherwise the scheme and Host header of the request itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import Response

from llmcloud.auth.errors import CsrfFailed
from llmcloud.settings import Settings

SESSION_COOKIE = "llmcloud_session"
PENDING_COOKIE = "llmcloud_pending"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
PENDING_COOKIE_SECONDS = 30 * 24 * 3600
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEBSOCKET_SCHEMES = {"ws": "http", "wss": "https"}


class CookieSigner:
    """Signs cookie values with HMAC-SHA256; `purpose` keeps one cookie's value out of another."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, value: str, purpose: str) -> str:
        return f"{value}.{self._signature(value, purpose)}"

    def unsign(self, signed: str | None, purpose: str) -> str | None:
        """Return the value of a signed cookie, or None when it is missing or forged."""
        if not signed:
            return None
        value, _, signature = signed.rpartition(".")
        if not value or not hmac.compare_digest(signature, self._signature(value, purpose)):
            return None
        return value

    def _signature(self, value: str, purpose: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_https(connection: HTTPConnection, settings: Settings) -> bool:
    if connection.url.scheme in ("https", "wss"):
        return True
    return settings.public_url is not None and settings.public_url.startswith("https://")


def set_session_cookie(
    response: Response,
    connection: HTTPConnection,
    settings: Settings,
    signer: CookieSigner,
    token: str,
) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        signer.sign(token, SESSION_COOKIE),
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="lax",
        secure=is_https(connection, settings),
        path="/",
    )


def session_token(connection: HTTPConnection, signer: CookieSigner) -> str | None:
    return signer.unsign(connection.cookies.get(SESSION_COOKIE), SESSION_COOKIE)


def set_pending_cookie(
    response: Response,
    connection: HTTPConnection,
    settings: Settings,
    signer: CookieSigner,
    user_id: int,
    username: str,
) -> None:
    # The cookie also contains the username, which must match the account's, as a second
    # check besides ids that are never reused (migration 0003).
    value = f"{user_id}:{int(time.time())}:{username}"
    response.set_cookie(
        PENDING_COOKIE,
        signer.sign(value, PENDING_COOKIE),
        max_age=PENDING_COOKIE_SECONDS,
        httponly=True,
        samesite="lax",
        secure=is_https(connection, settings),
        path="/",
    )


def pending_account_ref(connection: HTTPConnection, signer: CookieSigner) -> tuple[int, str] | None:
    """Return the account id and username of a valid, unexpired pending cookie."""
    value = signer.unsign(connection.cookies.get(PENDING_COOKIE), PENDING_COOKIE)
    if value is None:
        return None
    user_id, _, rest = value.partition(":")
    issued, _, username = rest.partition(":")
    if not (user_id.isdigit() and issued.isdigit() and username):
        return None
    if time.time() - int(issued) > PENDING_COOKIE_SECONDS:
        return None
    return int(user_id), username


def app_origin(connection: HTTPConnection, settings: Settings) -> str:
    """Return the origin that pages of this app are served from."""
    if settings.public_url is not None:
        origin = normalize_origin(settings.public_url)
    else:
        scheme = _WEBSOCKET_SCHEMES.get(connection.url.scheme, connection.url.scheme)
        origin = normalize_origin(f"{scheme}://{connection.url.netloc}")
    if origin is None:
        raise CsrfFailed("cannot tell this app's own origin; set public_url")
    return origin


def normalize_origin(url: str) -> str | None:
    """Return `scheme://host:port` in lower case with the port made explicit, or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def check_same_origin(connection: HTTPConnection, settings: Settings) -> bool:
    """Raise CsrfFailed when Origin or Referer names another origin.

    Returns whether either header was present. Browsers send Origin with
    every POST and WebSocket handshake, so an absent header means a client
    that is not a browser.
    """
    sent = connection.headers.get("origin") or connection.headers.get("referer")
    if sent is None:
        return False
    expected = app_origin(connection, settings)
    if sent == "null" or normalize_origin(sent) != expected:
        raise CsrfFailed(
            f"request from origin {sent[:100]!r} rejected; this app accepts forms and "
            f"WebSockets only from its own pages at {expected}. If users reach it at another "
            "URL, set public_url"
        )
    return True
