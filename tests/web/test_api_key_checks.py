"""The /v1 API's database check of API keys, shared by the requests that wait on it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llmcloud.auth import api_keys
from llmcloud.auth.errors import InvalidCredentials
from llmcloud.db.models import User
from llmcloud.web import openai_api

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowCheck:
    """Stands in for the database check: counts calls and blocks until released."""

    def __init__(self, result: User | Exception) -> None:
        self.result = result
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, db: object, header: str | None, *, renew: bool = False) -> User:
        self.calls += 1
        self.release.wait(5)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_concurrent_requests_share_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    check = SlowCheck(User(id=7, username="alice"))
    monkeypatch.setattr(api_keys, "authenticate_bearer", check)
    db = object()

    waiters = [
        asyncio.ensure_future(openai_api._check_in_database(db, "Bearer k"))  # type: ignore[arg-type]
        for _ in range(5)
    ]
    await asyncio.sleep(0.1)
    check.release.set()
    users = await asyncio.gather(*waiters)

    assert check.calls == 1
    assert {user.id for user in users} == {7}
    assert openai_api._key_checks == {}


async def test_shared_check_error_reaches_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    check = SlowCheck(InvalidCredentials("invalid API key"))
    monkeypatch.setattr(api_keys, "authenticate_bearer", check)
    db = object()

    waiters = [
        asyncio.ensure_future(openai_api._check_in_database(db, "Bearer k"))  # type: ignore[arg-type]
        for _ in range(3)
    ]
    await asyncio.sleep(0.1)
    check.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert check.calls == 1
    assert all(isinstance(result, InvalidCredentials) for result in results)


async def test_cancelled_request_leaves_check_running(monkeypatch: pytest.MonkeyPatch) -> None:
    check = SlowCheck(User(id=7, username="alice"))
    monkeypatch.setattr(api_keys, "authenticate_bearer", check)
    db = object()

    leaving = asyncio.ensure_future(openai_api._check_in_database(db, "Bearer k"))  # type: ignore[arg-type]
    staying = asyncio.ensure_future(openai_api._check_in_database(db, "Bearer k"))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    leaving.cancel()
    check.release.set()
    user = await staying

    assert user.id == 7
    assert check.calls == 1


async def test_renewal_skips_key_whose_check_is_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    check = SlowCheck(User(id=7, username="alice"))
    monkeypatch.setattr(api_keys, "authenticate_bearer", check)
    db = object()

    waiting = asyncio.ensure_future(openai_api._check_in_database(db, "Bearer k"))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    openai_api._renew_key(db, "Bearer k")  # type: ignore[arg-type]
    check.release.set()
    await waiting

    assert check.calls == 1


async def test_failed_renewal_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    check = SlowCheck(OSError("database unreachable"))
    check.release.set()
    monkeypatch.setattr(api_keys, "authenticate_bearer", check)

    openai_api._renew_key(object(), "Bearer k")  # type: ignore[arg-type]
    for _ in range(100):
        if not openai_api._key_checks:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)

    assert "checking a cached API key again failed: database unreachable" in caplog.text
