"""Per-account limits on chat prompts, shared by every web instance through Redis.

`web_chat_rate_limit` caps the prompts (sends and regenerations) that one
account may start per minute on the chat page. The minute slides: a request
counts against the limit for 60 seconds after it was let through, so no
window boundary lets a burst of twice the limit pass. Rejected requests do
not count. With `redis_url` set, every instance records the requests in the
same sorted set, `llmcloud:rate:<key>`, so the limit applies however the load
balancer spreads a user's sockets. Without it, each instance counts alone.

An unreachable Redis lets prompts through, logged once per outage, because a
limit is not worth an outage of the chat.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmcloud.db.errors import ServiceError

log = logging.getLogger("llmcloud.web")

WINDOW_SECONDS = 60
# Every this many requests, keys with no request in the last window are dropped.
SWEEP_EVERY = 1000
# Many users can share one address, such as a class behind one router.
ADDRESS_FACTOR = 10


class RateLimitExceeded(ServiceError):
    """An account started more prompts in this window than the limit allows."""

    status_code = 429

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            f"rate limit of {limit} prompts per minute reached (setting web_chat_rate_limit); "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after


class RateLimiter(Protocol):
    async def hit(self, key: str) -> None:
        """Count one request for `key`, or raise RateLimitExceeded when over the limit."""

    async def close(self) -> None: ...


@dataclass
class LoginLimiters:
    """Password log-ins counted per account name and, more loosely, per client address."""

    per_account: RateLimiter
    per_address: RateLimiter

    async def close(self) -> None:
        await self.per_account.close()
        await self.per_address.close()


def login_limiters_for(limit: int, redis_url: str | None) -> LoginLimiters:
    """Return limiters of log-ins per minute: `limit` per account name, 10 times that per address.

    A `limit` of 0 means no limit.
    """
    return LoginLimiters(
        per_account=rate_limiter_for(limit, redis_url),
        per_address=rate_limiter_for(limit * ADDRESS_FACTOR, redis_url),
    )


def rate_limiter_for(limit: int, redis_url: str | None) -> RateLimiter:
    """Return a limiter of `limit` requests per minute; 0 means no limit."""
    if limit == 0:
        return NoLimit()
    if redis_url:
        return RedisRateLimiter(aioredis.Redis.from_url(redis_url), limit)
    return LocalRateLimiter(limit)


class NoLimit:
    async def hit(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None


class LocalRateLimiter:
    """Counts requests in this process only."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._times: dict[str, deque[float]] = {}
        self._hits = 0

    async def hit(self, key: str) -> None:
        now = self.clock()
        self._hits += 1
        if self._hits % SWEEP_EVERY == 0:
            self._sweep(now)
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - WINDOW_SECONDS:
            times.popleft()
        if len(times) >= self.limit:
            raise RateLimitExceeded(self.limit, _seconds_left(times[0], now))
        times.append(now)

    def _sweep(self, now: float) -> None:
        for key in [
            key
            for key, times in self._times.items()
            if not times or times[-1] <= now - WINDOW_SECONDS
        ]:
            del self._times[key]

    async def close(self) -> None:
        self._times.clear()


# Drops the requests older than the window, then records this one if the limit allows.
# Returns 1, or 0 and the time of the oldest request still counted.
_SLIDING_WINDOW_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2]}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return {1, ARGV[1]}
"""


class RedisRateLimiter:
    """Counts requests in Redis, shared by every instance that uses the same server."""

    def __init__(
        self, client: aioredis.Redis, limit: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.limit = limit
        self.clock = clock
        self._failing = False
        self._script = client.register_script(_SLIDING_WINDOW_SCRIPT)

    async def hit(self, key: str) -> None:
        now = self.clock()
        # Requests at the same instant stay apart in the set by their random suffix.
        member = f"{now}:{secrets.token_hex(4)}"
        try:
            allowed, oldest = await self._script(
                keys=[f"llmcloud:rate:{key}"], args=[now, WINDOW_SECONDS, self.limit, member]
            )
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("cannot count %s in Redis; rate limit not applied: %s", key, exc)
            self._failing = True
            return
        self._failing = False
        if not int(allowed):
            raise RateLimitExceeded(self.limit, _seconds_left(float(oldest), now))

    async def close(self) -> None:
        await self.client.aclose()


def _seconds_left(oldest: float, now: float) -> int:
    """Return the whole seconds until the oldest counted request leaves the window."""
    return max(1, math.ceil(oldest + WINDOW_SECONDS - now))
