"""Who may use the SOCKS proxy: llmcloud accounts with an allowed role.

Passwords are checked by `llmcloud.auth.accounts.authenticate()` in a worker
thread, because argon2 is slow on purpose. A browser opens many connections,
each with the same login, so a successful check is remembered for
`cache_seconds` under a keyed hash of username and password (the key is
random per process, and the password itself is never kept).

Failed attempts are counted per client address in a sliding window. An
address past the limit gets the RFC 1929 failure reply without a password
check until its old failures age out. So a guesser can neither test
passwords quickly through the proxy nor keep the argon2 threads busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable

from argon2 import PasswordHasher

from llmcloud.auth.accounts import authenticate
from llmcloud.auth.errors import ServiceError
from llmcloud.auth.passwords import DEFAULT_HASHER
from llmcloud.db.database import Database

log = logging.getLogger("llmcloud.socks")

# Returns the account name for valid credentials, None otherwise.
Authenticator = Callable[[str, str], Awaitable[str | None]]
MAX_TRACKED_ADDRESSES = 10_000
MAX_CACHED_LOGINS = 1_000


class AccountAuthenticator:
    """Checks credentials against llmcloud accounts and their role."""

    def __init__(
        self,
        database: Database,
        roles: Iterable[str],
        *,
        hasher: PasswordHasher = DEFAULT_HASHER,
        max_parallel_checks: int = 4,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._roles = frozenset(roles)
        self._hasher = hasher
        self._checks = asyncio.Semaphore(max_parallel_checks)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[str | None]] = {}

    async def __call__(self, username: str, password: str) -> str | None:
        key = self._cache_entry_key(username, password)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        self._cache.pop(key, None)

        # Connections that arrive together with the same login share one check.
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        check = asyncio.ensure_future(self._check(username, password))
        self._in_flight[key] = check
        try:
            user = await asyncio.shield(check)
        finally:
            if check.done():
                self._in_flight.pop(key, None)
            else:
                check.add_done_callback(lambda _: self._in_flight.pop(key, None))

        if user is not None and self._cache_seconds > 0:
            self._cache[key] = (user, self._clock() + self._cache_seconds)
            if len(self._cache) > MAX_CACHED_LOGINS:
                self._cache.popitem(last=False)
        return user

    def _cache_entry_key(self, username: str, password: str) -> bytes:
        message = username.encode() + b"\0" + password.encode()
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    async def _check(self, username: str, password: str) -> str | None:
        async with self._checks:
            try:
                user = await asyncio.to_thread(
                    authenticate, self._database, username, password, hasher=self._hasher
                )
            except ServiceError as exc:
                log.info("SOCKS login failed for user %r: %s", username[:64], exc)
                return None
        if user.role not in self._roles:
            log.info(
                "SOCKS login rejected for account %s: role %s is not one of %s",
                user.id,
                user.role,
                ", ".join(sorted(self._roles)),
            )
            return None
        return user.username


class FailureLimiter:
    """Counts failed logins per client address over a sliding window of `window` seconds."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def is_blocked(self, address: str) -> bool:
        failures = self._failures.get(address)
        if failures is None:
            return False
        self._expire(failures)
        return len(failures) >= self.max_failures

    def record_failure(self, address: str) -> None:
        failures = self._failures.setdefault(address, deque())
        self._failures.move_to_end(address)
        failures.append(self._clock())
        self._expire(failures)
        if len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)

    def _expire(self, failures: deque[float]) -> None:
        oldest_kept = self._clock() - self.window
        while failures and failures[0] <= oldest_kept:
            failures.popleft()
