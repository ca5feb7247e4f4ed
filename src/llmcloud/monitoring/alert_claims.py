"""Claims that let one web instance of a deployment send each alert notification.

Every web instance runs the built-in alerter over its own samples. Without
`redis_url` each instance notifies alone (`LocalClaims`), which is right for a
single process. With `redis_url` an instance must claim a notification before
sending it (`RedisClaims`). The hash `llmcloud:alert:<name>:<subject>` records
the state last notified (`firing` or `resolved`) and when, and a Lua script
changes it atomically:

- a FIRING notification is claimed unless the alert was notified as firing less
  than `alert_repeat_interval` ago;
- a RESOLVED notification is claimed only while the recorded state is firing.

An instance that loses a claim treats the notification as sent. One whose send
fails releases its claim, so that it or another instance tries again. An
unreachable Redis lets every instance send, logged once per outage, because a
repeated message is better than a missing one.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from llmcloud.monitoring.alerter import Notice

logger = logging.getLogger("llmcloud.monitoring")

KEY_PREFIX = "llmcloud:alert:"

# How long a record outlives its last notification, on top of the repeat interval. An alert
# that keeps firing is notified again, and so recorded again, every repeat interval.
RECORD_GRACE_SECONDS = 86400

# KEYS[1]: the alert's record. ARGV: state to notify, now, repeat interval, owner, TTL seconds.
CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
local sent_at = redis.call('HGET', KEYS[1], 'sent_at')
if ARGV[1] == 'firing' then
  if state == 'firing' and tonumber(ARGV[2]) - tonumber(sent_at) < tonumber(ARGV[3]) then
    return 0
  end
elseif state ~= 'firing' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'sent_at', ARGV[2], 'owner', ARGV[4],
  'previous_state', state or '', 'previous_sent_at', sent_at or '')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1]: the alert's record. ARGV: state claimed, time of the claim, owner. Restores the
# record as it was before the claim, unless another instance has changed it since.
RELEASE_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'sent_at', 'owner',
  'previous_state', 'previous_sent_at')
if record[1] ~= ARGV[1] or record[2] ~= ARGV[2] or record[3] ~= ARGV[3] then
  return 0
end
if record[4] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'state', record[4], 'sent_at', record[5], 'owner', '')
end
return 1
"""


class AlertClaims(Protocol):
    async def claim(
        self, notices: Sequence[Notice], now: float, repeat_interval: float
    ) -> list[Notice]:
        """Return the notices that this instance should send; the others are sent elsewhere."""

    async def release(self, notices: Sequence[Notice], now: float) -> None:
        """Give back claims taken at `now` whose notices could not be sent."""

    async def close(self) -> None: ...


def alert_claims_for(redis_url: str | None) -> AlertClaims:
    """Return claims shared through Redis when `redis_url` is set, else claims of this process."""
    if redis_url:
        return RedisClaims(aioredis.Redis.from_url(redis_url))
    return LocalClaims()


class LocalClaims:
    """Claims for a single process: every notification is this instance's to send."""

    async def claim(
        self, notices: Sequence[Notice], now: float, repeat_interval: float
    ) -> list[Notice]:
        return list(notices)

    async def release(self, notices: Sequence[Notice], now: float) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisClaims:
    """Claims recorded in Redis, shared by every instance that uses the same server."""

    def __init__(self, client: aioredis.Redis, key_prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.owner = uuid.uuid4().hex
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._failing = False

    async def claim(
        self, notices: Sequence[Notice], now: float, repeat_interval: float
    ) -> list[Notice]:
        ttl = math.ceil(repeat_interval) + RECORD_GRACE_SECONDS
        claimed = []
        for notice in notices:
            state = "resolved" if notice.resolved else "firing"
            arguments: list[str | int] = [state, repr(now), repr(repeat_interval), self.owner, ttl]
            try:
                won = await self._claim(keys=[self._key(notice)], args=arguments)
            except (RedisError, OSError) as exc:
                self._report_failure(exc)
                return list(notices)
            if won:
                claimed.append(notice)
            else:
                logger.debug("alert %s %s is notified by another instance", notice.name, state)
        self._failing = False
        return claimed

    async def release(self, notices: Sequence[Notice], now: float) -> None:
        for notice in notices:
            state = "resolved" if notice.resolved else "firing"
            try:
                await self._release(keys=[self._key(notice)], args=[state, repr(now), self.owner])
            except (RedisError, OSError) as exc:
                self._report_failure(exc)
                return

    async def close(self) -> None:
        await self.client.aclose()

    def _key(self, notice: Notice) -> str:
        return f"{self.key_prefix}{notice.name}:{notice.subject}"

    def _report_failure(self, exc: BaseException) -> None:
        if not self._failing:
            logger.warning(
                "coordinating alerts through Redis failed, so this instance sends them alone "
                "and other instances may send them too: %s",
                exc,
            )
        self._failing = True
