"""Access control of every route of the web app, as one table: route by kind of visitor.

The visitors are: anonymous (no cookie, no API key), pending (an account
waiting for approval), user, admin, deactivated, and expired (a user whose
session has expired and whose API key was revoked). Pending and deactivated
accounts hold a session and an API key from before their state changed, so
the table shows that the app checks the account on every request rather
than trusting an old session or key. Each request gets a fresh session and
fresh targets (chats, accounts, keys, backends), so no request depends on
what an earlier one changed.

The table is checked against the app's routes: a route without a row, or a
row without a route, fails the test, so every new route needs its entry.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response
from starlette.routing import Mount
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from llmcloud.auth import accounts, api_keys
from llmcloud.auth.sessions import hash_token
from llmcloud.db import backends as stored_backends
from llmcloud.db import chats
from llmcloud.db.chat_export import export_chats
from llmcloud.db.models import ApiKey, Identity, Role, User, UserSession, utcnow
from llmcloud.web import create_app, openai_api
from llmcloud.web.deps import WebState
from llmcloud.web.security import SESSION_COOKIE
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, ORIGIN, PASSWORD, web_settings

VISITORS = ["anonymous", "pending", "user", "admin", "deactivated", "expired"]

# Expected outcomes: an HTTP status, a redirect to one of these pages, or for the WebSocket
# "open" or the close code.
LOGIN = "redirect to /login"
WAIT = "redirect to /pending"
OPEN = "open"

Expected = int | str
WEBSOCKET_WAIT_SECONDS = 2.0


def session_page(ok: Expected) -> dict[str, Expected]:
    """A page or form for every account that may log in."""
    return {
        "anonymous": LOGIN,
        "pending": WAIT,
        "user": ok,
        "admin": ok,
        "deactivated": 403,
        "expired": LOGIN,
    }


def admin_page(ok: Expected) -> dict[str, Expected]:
    return {**session_page(ok), "user": 403}


def api(ok: Expected) -> dict[str, Expected]:
    """A /v1 route, which takes only an API key."""
    return {
        "anonymous": 401,
        "pending": 403,
        "user": ok,
        "admin": ok,
        "deactivated": 403,
        "expired": 401,
    }


def everyone(outcome: Expected) -> dict[str, Expected]:
    return dict.fromkeys(VISITORS, outcome)


def for_guests(guest: Expected, member: Expected) -> dict[str, Expected]:
    """A page that differs between visitors with a usable session and everyone else."""
    return {**everyone(guest), "user": member, "admin": member}


TABLE: dict[tuple[str, str], dict[str, Expected]] = {
    ("GET", "/static"): everyone(200),
    ("GET", "/healthz"): everyone(200),
    ("GET", "/favicon.ico"): everyone(200),
    ("GET", "/readyz"): everyone(200),
    ("GET", "/"): for_guests(LOGIN, 303),
    ("GET", "/login"): for_guests(200, 303),
    ("POST", "/login"): everyone(401),
    ("GET", "/signup"): everyone(200),
    ("POST", "/signup"): everyone(WAIT),
    ("POST", "/logout"): session_page(LOGIN),
    ("GET", "/pending"): everyone(200),
    ("GET", "/pending/status"): everyone(200),
    ("GET", "/chats"): session_page(200),
    ("POST", "/chats"): session_page(303),
    ("GET", "/chats/export"): session_page(200),
    ("POST", "/chats/import"): session_page(303),
    ("GET", "/chats/{chat_id}"): session_page(200),
    ("POST", "/chats/{chat_id}/rename"): session_page(303),
    ("POST", "/chats/{chat_id}/system-prompt"): session_page(303),
    ("POST", "/chats/{chat_id}/delete"): session_page(303),
    ("GET", "/chats/{chat_id}/export"): session_page(200),
    ("WEBSOCKET", "/ws/chats/{chat_id}"): {
        "anonymous": 4401,
        "pending": 4403,
        "user": OPEN,
        "admin": OPEN,
        "deactivated": 4403,
        "expired": 4401,
    },
    ("GET", "/api-keys"): session_page(200),
    ("POST", "/api-keys"): session_page(200),
    ("POST", "/api-keys/{key_id}/revoke"): session_page(303),
    ("GET", "/admin"): admin_page(303),
    ("GET", "/admin/status"): admin_page(200),
    ("GET", "/admin/users"): admin_page(200),
    ("POST", "/admin/users/{user_id}/approve"): admin_page(303),
    ("POST", "/admin/users/{user_id}/role"): admin_page(303),
    ("POST", "/admin/users/{user_id}/deactivate"): admin_page(303),
    ("POST", "/admin/users/{user_id}/reactivate"): admin_page(303),
    ("GET", "/admin/users/{user_id}/delete"): admin_page(200),
    ("POST", "/admin/users/{user_id}/delete"): admin_page(303),
    ("GET", "/admin/backends"): admin_page(200),
    ("POST", "/admin/backends"): admin_page(303),
    ("POST", "/admin/backends/{backend_id}/remove"): admin_page(303),
    ("GET", "/admin/charts"): admin_page(200),
    ("GET", "/admin/charts.json"): admin_page(200),
    ("GET", "/admin/users/{user_id}/identities"): admin_page(200),
    ("POST", "/admin/users/{user_id}/identities/{identity_id}/unlink"): admin_page(303),
    ("WEBSOCKET", "/ws/chats/{chat_id}/live"): {
        "anonymous": 4401,
        "pending": 4403,
        "user": OPEN,
        "admin": OPEN,
        "deactivated": 4403,
        "expired": 4401,
    },
    # Public: providers' log-in pages (here for a provider that is not configured), the ACME
    # challenge (here for an unknown token) and the proxy auto-config.
    ("GET", "/auth/{name}/login"): everyone(404),
    ("GET", "/auth/{name}/callback"): everyone(404),
    ("GET", "/.well-known/acme-challenge/{token}"): everyone(404),
    ("GET", "/proxy.pac"): everyone(200),
    # Served only to loopback clients without metrics_token, and the test client is not one.
    ("GET", "/metrics"): everyone(403),
    ("GET", "/v1/models"): api(200),
    ("GET", "/v1/models/{model:path}"): api(200),
    ("POST", "/v1/chat/completions"): api(200),
    # Unknown /v1 paths get OpenAI's 404 before any key check; they reveal nothing.
    ("GET", "/v1/{path:path}"): everyone(404),
    ("POST", "/v1/{path:path}"): everyone(404),
    ("PUT", "/v1/{path:path}"): everyone(404),
    ("PATCH", "/v1/{path:path}"): everyone(404),
    ("DELETE", "/v1/{path:path}"): everyone(404),
}


def app_routes(app: Any) -> set[tuple[str, str]]:
    """Return (method, path template) of every route; a mount counts as one GET.

    The /v1 API's routes are served by middleware (OpenAIAPI), outside the router.
    """
    found = {(method, route.path) for route in openai_api.ROUTES for method in route.methods}
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            found.add(("GET", route.path))
        elif route.methods is None:
            found.add(("WEBSOCKET", route.path))
        else:
            found.update((method, route.path) for method in route.methods if method != "HEAD")
    return found


@dataclass
class Visitor:
    """The app with its accounts, and the credentials of one kind of visitor."""

    kind: str
    client: TestClient
    state: WebState
    admin: User
    account: User | None
    api_key: str | None
    spare_key_id: int
    names: Iterator[int] = field(default_factory=count)

    @property
    def owner(self) -> User:
        """The account whose chats and keys the visitor's requests name."""
        return self.account or self.admin

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"


def mint_session(visitor: Visitor, *, expired: bool = False) -> tuple[str, str]:
    """Store a session for the visitor's account directly and return (cookie, CSRF token).

    Stored directly rather than through log-in, because pending and
    deactivated accounts can no longer log in.
    """
    assert visitor.account is not None
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now - timedelta(minutes=1) if expired else now + timedelta(hours=1)
    with visitor.state.db.transaction() as session:
        session.add(
            UserSession(
                token_hash=hash_token(token),
                user_id=visitor.account.id,
                created_at=now - timedelta(hours=2),
                last_seen_at=now,
                expires_at=expires_at,
                csrf_token=csrf,
            )
        )
    return visitor.state.signer.sign(token, SESSION_COOKIE), csrf


def change_account(visitor: Visitor, **values: Any) -> None:
    """Change the account's row directly, keeping its sessions, as another process might."""
    assert visitor.account is not None
    with visitor.state.db.transaction() as session:
        session.execute(sa.update(User).where(User.id == visitor.account.id).values(**values))


def make_visitor(kind: str, client: TestClient) -> Visitor:
    state: WebState = client.app.state.web  # type: ignore[attr-defined]
    db = state.db
    admin = accounts.create_account(db, "admin", PASSWORD, role=Role.ADMIN, hasher=CHEAP_HASHER)
    if kind == "anonymous":
        spare = api_keys.create_api_key(db, admin.id, "spare").record
        return Visitor(kind, client, state, admin, None, None, spare.id)

    account = admin
    if kind != "admin":
        account = accounts.create_account(db, "visitor", PASSWORD, hasher=CHEAP_HASHER)
    key = api_keys.create_api_key(db, account.id, "script")
    spare = api_keys.create_api_key(db, account.id, "spare").record
    visitor = Visitor(kind, client, state, admin, account, key.key, spare.id)
    if kind == "pending":
        change_account(visitor, role=Role.PENDING)
    elif kind == "deactivated":
        change_account(visitor, deactivated_at=utcnow())
    elif kind == "expired":
        with db.transaction() as session:
            session.execute(
                sa.update(ApiKey).where(ApiKey.id == key.record.id).values(revoked_at=utcnow())
            )
    return visitor


# Each request builder returns the path to request and the keyword arguments of client.request.
Request = tuple[str, dict[str, Any]]


def chat_of(visitor: Visitor) -> str:
    return chats.create_chat(visitor.state.db, visitor.owner.id, title="a chat").id


def victim(visitor: Visitor, role: Role = Role.PENDING) -> User:
    db = visitor.state.db
    return accounts.create_account(db, visitor.unique("victim"), None, role=role)


def request_for(visitor: Visitor, method: str, path: str) -> Request:
    """Return a request that succeeds for a visitor who may use the route."""
    db = visitor.state.db
    if "{chat_id}" in path:
        path = path.replace("{chat_id}", chat_of(visitor))
    if "{key_id}" in path:
        path = path.replace("{key_id}", str(visitor.spare_key_id))
    if "{backend_id}" in path:
        row = stored_backends.add_backend(
            db, name=visitor.unique("stored"), kind="openai", base_url="http://127.0.0.1:9"
        )
        path = path.replace("{backend_id}", str(row.id))
    path = path.replace("{model:path}", FAKE_MODEL).replace("{path:path}", "embeddings")

    path = path.replace("{name}", "unconfigured").replace("{token}", "unknown-token")

    target = None
    if "{user_id}" in path:
        target = victim(visitor, Role.USER if path.endswith("/reactivate") else Role.PENDING)
        path = path.replace("{user_id}", str(target.id))
    if "{identity_id}" in path:
        assert target is not None
        path = path.replace("{identity_id}", str(linked_identity(visitor, target)))
    return path, _body_for(visitor, method, path, target)


def linked_identity(visitor: Visitor, user: User) -> int:
    """Link two provider identities to the account and return one's id.

    Two, because the only way into an account without a password cannot be unlinked.
    """
    identities = [
        Identity(user_id=user.id, provider="github", subject=visitor.unique("subject"))
        for _ in range(2)
    ]
    with visitor.state.db.transaction() as session:
        session.add_all(identities)
    return identities[0].id


def _body_for(visitor: Visitor, method: str, path: str, target: User | None) -> dict[str, Any]:
    if path == "/static":
        return {}
    if method != "POST":
        return {}
    forms: dict[str, dict[str, Any]] = {
        "/login": {"username": "admin", "password": "wrong password"},
        "/signup": {
            "username": visitor.unique("newcomer"),
            "password": PASSWORD,
            "password_confirm": PASSWORD,
        },
        "/api-keys": {"name": "new key"},
        "/admin/backends": {
            "name": visitor.unique("added"),
            "kind": "openai",
            "base_url": "http://127.0.0.1:9",
        },
    }
    if path == "/v1/chat/completions":
        return {"json": {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "Hi"}]}}
    if path == "/chats/import":
        archive = json.dumps(export_chats(visitor.state.db, visitor.owner.id)).encode()
        return {"files": {"file": ("chats.json", archive, "application/json")}}
    if path.endswith("/rename"):
        return {"data": {"title": "renamed"}}
    if path.endswith("/system-prompt"):
        return {"data": {"system_prompt": "Be brief."}}
    if path.endswith("/role"):
        return {"data": {"role": "user"}}
    if path.startswith("/admin/users/") and path.endswith("/delete"):
        assert target is not None
        return {"data": {"confirm_username": target.username}}
    return {"data": forms.get(path, {})}


def outcome_of(response: Response) -> Expected:
    location = response.headers.get("location", "")
    if response.status_code == 303 and location.startswith("/login"):
        return LOGIN
    if response.status_code == 303 and location.startswith("/pending"):
        return WAIT
    return response.status_code


def send(visitor: Visitor, method: str, path: str) -> Expected:
    """Send the route's request as the visitor, with a fresh session, and return the outcome."""
    client = visitor.client
    client.cookies.clear()
    headers: dict[str, str] = {}
    if visitor.account is not None:
        cookie, csrf = mint_session(visitor, expired=visitor.kind == "expired")
        client.cookies.set(SESSION_COOKIE, cookie)
        headers["X-CSRF-Token"] = csrf
    if visitor.api_key is not None and path.startswith("/v1/"):
        headers["Authorization"] = f"Bearer {visitor.api_key}"

    url, options = request_for(visitor, method, path)
    if method == "WEBSOCKET":
        return _websocket_outcome(client, url)
    if url == "/static":
        url = "/static/app.css"
    return outcome_of(client.request(method, url, headers=headers, **options))


def _websocket_outcome(client: TestClient, url: str) -> Expected:
    """Return "open" when the socket stays open, else the code it was closed with.

    A socket that rejects the visitor sends an error and closes at once. The chat
    socket answers the empty message sent here with an error and stays open. The
    live socket ignores it; its first message, `watching`, shows that it stays open.
    """
    try:
        with client.websocket_connect(url, headers={"Origin": ORIGIN}) as socket:
            socket.send_text("{}")
            first = _receive_within(socket, WEBSOCKET_WAIT_SECONDS)
            text = first.get("text", "") if first is not None else ""
            if first is None or "message type" in text or '"watching"' in text:
                return OPEN
            if first["type"] == "websocket.close":
                return int(first["code"])
            closing = socket.receive()
            return int(closing["code"])
    except WebSocketDisconnect as exc:
        return exc.code


def _receive_within(socket: WebSocketTestSession, seconds: float) -> dict[str, Any] | None:
    """Return the socket's next message, or None when none comes within `seconds`."""

    async def receive() -> dict[str, Any] | None:
        with anyio.move_on_after(seconds):
            message: dict[str, Any] = await socket._send_rx.receive()  # no public timeout
            return message
        return None

    return socket.portal.call(receive)


@pytest.fixture(params=VISITORS)
def visitor(
    request: pytest.FixtureRequest, tmp_path: Path, fake_backend: FakeBackend
) -> Iterator[Visitor]:
    settings = web_settings(tmp_path / "data", fake_backend.url)
    with TestClient(
        create_app(settings, hasher=CHEAP_HASHER),
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    ) as client:
        yield make_visitor(request.param, client)


def test_table_covers_every_route(tmp_path: Path) -> None:
    app = create_app(web_settings(tmp_path / "data", "http://127.0.0.1:9"))
    routes = app_routes(app)
    missing = sorted(routes - TABLE.keys())
    assert missing == [], "routes without a row; add one to TABLE with each visitor's outcome"
    stale = sorted(TABLE.keys() - routes)
    assert stale == [], "rows of routes that no longer exist; remove them from TABLE"


def test_every_route_for_visitor(visitor: Visitor, fake_backend: FakeBackend) -> None:
    failures = []
    for (method, path), expected in TABLE.items():
        actual = send(visitor, method, path)
        if actual != expected[visitor.kind]:
            failures.append(f"{method} {path}: expected {expected[visitor.kind]}, got {actual}")
    assert not failures, "\n".join(failures)
