"""Audit events of log-ins with a password."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from llmcloud.db.models import Outcome
from tests.web.conftest import ORIGIN, PASSWORD, log_in, sign_up
from tests.web.oauth_helpers import audit_events


def test_password_login_is_audited(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    assert sign_up(client, "admin").status_code == 303
    caplog.set_level(logging.INFO, logger="llmcloud.audit")
    other = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert log_in(other, "admin").status_code == 303
    event = audit_events(client)[-1]
    assert (event.action, event.provider, event.outcome) == ("login", "local", Outcome.SUCCESS)
    assert event.actor_user_id == 1
    assert PASSWORD not in caplog.text


def test_wrong_password_is_audited(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    assert sign_up(client, "admin").status_code == 303
    caplog.set_level(logging.INFO, logger="llmcloud.audit")
    other = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert log_in(other, "admin", "a wrong password here").status_code == 401
    event = audit_events(client)[-1]
    assert (event.outcome, event.reason, event.actor_user_id) == (
        Outcome.FAILURE,
        "invalid_credentials",
        1,
    )
    assert "a wrong password here" not in caplog.text


def test_unknown_user_login_is_audited(client: TestClient) -> None:
    assert sign_up(client, "admin").status_code == 303
    other = TestClient(client.app, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert log_in(other, "nobody").status_code == 401
    event = audit_events(client)[-1]
    assert (event.outcome, event.actor_user_id) == (Outcome.FAILURE, None)
