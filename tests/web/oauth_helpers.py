"""Driving provider log-ins from a TestClient of the web app, and reading what they stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import sqlalchemy as sa
from fastapi.testclient import TestClient

from llmcloud.db.database import Database
from llmcloud.db.models import AuditEvent, Identity, User, UserSession
from tests.web.conftest import ORIGIN

PROVIDER_LOGIN_STEPS = 12


def database(client: TestClient) -> Database:
    db: Database = client.app.state.web.db  # type: ignore[attr-defined]
    return db


def start(client: TestClient, provider: str) -> str:
    """Start a log-in and return the provider's authorization URL."""
    response = client.get(f"/auth/{provider}/login")
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def follow_provider(
    authorization_url: str, browser: httpx.Client, credentials: dict[str, str] | None = None
) -> str:
    """Follow the provider's redirects, filling in its login form, up to our callback URL."""
    url = authorization_url
    for _ in range(PROVIDER_LOGIN_STEPS):
        if url.startswith(ORIGIN):
            return url
        response = browser.get(url)
        if response.status_code == 200 and credentials is not None and "<form" in response.text:
            action = urlsplit(url)._replace(path=_form_action(response.text), query="").geturl()
            response = browser.post(action, data=credentials)
        assert response.is_redirect, f"{url}: HTTP {response.status_code}: {response.text[:300]}"
        url = str(httpx.URL(url).join(response.headers["location"]))
    raise AssertionError(f"no redirect to {ORIGIN} after {PROVIDER_LOGIN_STEPS} steps")


def callback_params(callback_url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(callback_url).query).items()}


def with_params(callback_url: str, **changes: str | None) -> str:
    params: dict[str, Any] = {**callback_params(callback_url), **changes}
    query = str(httpx.QueryParams({k: v for k, v in params.items() if v is not None}))
    return urlsplit(callback_url)._replace(query=query).geturl()


def users(client: TestClient) -> Sequence[User]:
    with database(client).session() as session:
        return session.scalars(sa.select(User).order_by(User.id)).all()


def identities(client: TestClient) -> Sequence[Identity]:
    with database(client).session() as session:
        return session.scalars(sa.select(Identity).order_by(Identity.id)).all()


def session_count(client: TestClient) -> int:
    with database(client).session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(UserSession)) or 0


def audit_events(client: TestClient) -> Sequence[AuditEvent]:
    with database(client).session() as session:
        return session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)).all()


def _form_action(html: str) -> str:
    marker = 'action="'
    start_at = html.index(marker) + len(marker)
    return html[start_at : html.index('"', start_at)]
