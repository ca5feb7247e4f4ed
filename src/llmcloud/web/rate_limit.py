"""Per-account limits on chat prompts, shared by every web instance through Redis.

`web_chat_rate_limit` caps the prompts (sends and regenerations) that one
account may start per minute on the chat page. The count uses fixed
one-minute windows. With `redis_url` set, every instance increments the same
counter, `llmcloud:rate:<key>:<window>`, so the limit holds however the load
balancer spreads a user's sockets. Without it, each instance counts alone.

An unreachable Redis lets prompts through, logged once per outage, because a
limit is not worth an outage of the chat.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmcloud.db.errors import ServiceError

log = logging.getLogger("llmcloud.web")

WINDOW_SECONDS = 60
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
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str) -> None:
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        counted_window, count = self._counts.get(key, (window, 0))
        if counted_window != window:
            count = 0
        count += 1
        self._counts[key] = (window, count)
        if count > self.limit:
            raise RateLimitExceeded(self.limit, _seconds_left(now))

    async def close(self) -> None:
        self._counts.clear()


class RedisRateLimiter:
    """Counts requests in Redis, shared by every instance that uses the same server."""

    def __init__(
        self, client: aioredis.Redis, limit: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.limit = limit
        self.clock = clock
        self._failing = False

    async def hit(self, key: str) -> None:
        now = self.clock()
        counter = f"llmcloud:rate:{key}:{int(now // WINDOW_SECONDS)}"
        try:
            async with self.client.pipeline(transaction=True) as pipeline:
                pipeline.incr(counter)
                pipeline.expire(counter, 2 * WINDOW_SECONDS)
                count, _ = await pipeline.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("cannot count %s in Redis; rate limit not applied: %s", key, exc)
            self._failing = True
            return
        self._failing = False
        if int(count) > self.limit:
            raise RateLimitExceeded(self.limit, _seconds_left(now))

    async def close(self) -> None:
        await self.client.aclose()


def _seconds_left(now: float) -> int:
    return max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
