"""Log-ins between the redirect to the provider and the callback, keyed by their state.

An entry holds the PKCE verifier and the nonce, which never leave the
server. `take()` removes the entry it returns, so each state works once.
Entries expire after PENDING_LOGIN_SECONDS. Without `redis_url` the
entries live in this process, so a callback must reach the web instance
that started its log-in. With `redis_url` every instance shares them, under
the key `llmcloud:oauth:<state>`, and GETDEL makes `take()` atomic across
instances.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Protocol

import redis
from redis.exceptions import RedisError

from llmcloud.auth.login_errors import LoginFailed

log = logging.getLogger("llmcloud.auth")

PENDING_LOGIN_SECONDS = 600
MAX_PENDING_LOGINS = 10_000
REDIS_PREFIX = "llmcloud:oauth:"


@dataclass(frozen=True)
class PendingLogin:
    provider: str
    code_verifier: str | None
    nonce: str | None
    next_path: str
    created_at: float


class PendingLogins(Protocol):
    def add(self, state: str, login: PendingLogin) -> None: ...

    def take(self, state: str) -> PendingLogin | None:
        """Remove and return the log-in of `state`, or None when unknown, used or expired."""


def pending_logins_for(redis_url: str | None) -> PendingLogins:
    if redis_url:
        return RedisPendingLogins(redis.Redis.from_url(redis_url))
    return LocalPendingLogins()


class LocalPendingLogins:
    """Pending log-ins in the memory of this process, the oldest dropped past MAX_PENDING_LOGINS."""

    def __init__(self, lifetime: float = PENDING_LOGIN_SECONDS) -> None:
        self._lifetime = lifetime
        self._entries: OrderedDict[str, PendingLogin] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, state: str, login: PendingLogin) -> None:
        with self._lock:
            self._drop_expired()
            while len(self._entries) >= MAX_PENDING_LOGINS:
                self._entries.popitem(last=False)
            self._entries[state] = login

    def take(self, state: str) -> PendingLogin | None:
        with self._lock:
            self._drop_expired()
            return self._entries.pop(state, None)

    def _drop_expired(self) -> None:
        deadline = time.monotonic() - self._lifetime
        while self._entries:
            state, oldest = next(iter(self._entries.items()))
            if oldest.created_at > deadline:
                return
            del self._entries[state]


class RedisPendingLogins:
    """Pending log-ins in Redis, shared by every web instance that uses the same server."""

    def __init__(self, client: redis.Redis, lifetime: int = PENDING_LOGIN_SECONDS) -> None:
        self._client = client
        self._lifetime = lifetime

    def add(self, state: str, login: PendingLogin) -> None:
        value = json.dumps(asdict(login))
        try:
            self._client.set(REDIS_PREFIX + state, value, ex=self._lifetime)
        except RedisError as exc:
            raise _store_failed(exc) from None

    def take(self, state: str) -> PendingLogin | None:
        try:
            value = self._client.getdel(REDIS_PREFIX + state)
        except RedisError as exc:
            raise _store_failed(exc) from None
        if not isinstance(value, bytes | str):
            return None
        return PendingLogin(**json.loads(value))


def _store_failed(exc: RedisError) -> LoginFailed:
    log.warning("pending log-in store in Redis failed: %s", exc)
    return LoginFailed(
        "the server cannot reach its Redis store of log-ins; try again in a minute, and ask an "
        "admin to check redis_url if this persists",
        reason="login_store_unavailable",
        status_code=503,
    )
