"""The deployment-wide queue: per-model waiting lines and backend slots shared through Redis.

Several web instances send chats to the same backends. Without coordination
each instance counts only its own requests, so N instances may send N times a
backend's max_parallel, and a user's queue position ignores the users of
other instances. With `redis_url` set, every gateway keeps these in Redis:

- `llmcloud:gateway:order`: a counter that numbers new requests in order of
  arrival across the deployment;
- `llmcloud:gateway:waiting:<model>`: a sorted set of the waiting tickets,
  scored by that number, so a ticket's position is its rank;
- `llmcloud:gateway:waiting-deadlines:<model>` and
  `llmcloud:gateway:running:<base_url>`: sorted sets of waiting and running
  tickets scored by an expiry time. The instance that owns a ticket moves
  the expiry forward every TICKET_TTL_SECONDS / 3, so the tickets of a
  crashed instance vanish within TICKET_TTL_SECONDS.

A backend is keyed by its base_url, because every instance names the same
server there. The script touches several keys at once, so it needs one Redis
server, not a Redis Cluster. One Lua script prunes expired tickets, counts the running
ones against each backend's max_parallel, and either assigns a slot, queues
the ticket, or reports that the queue is full, in one atomic step on Redis's
clock. A waiting ticket may take a free slot when fewer tickets than free
slots came before it, so the order of arrival is kept across instances.
Waiting requests ask again every POLL_SECONDS, and at once when a slot frees
on their own instance.

When Redis cannot be reached, a request falls back to the instance's own
queue (logged once per outage), because a shared count is not worth an
outage of the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmcloud.gateway.backend import BackendClient
from llmcloud.gateway.dispatch import Dispatcher, Ticket
from llmcloud.gateway.errors import GatewayBusy

logger = logging.getLogger("llmcloud.gateway")

TICKET_TTL_SECONDS = 15.0
# Limit of one Redis command, so that a Redis that stops responding delays a chat by this much
# before it falls back to the instance's own queue.
REDIS_TIMEOUT_SECONDS = 2.0
# NOTE: a chosen value, not measured: a waiting request learns of a slot freed on another
# instance up to this late.
POLL_SECONDS = 0.25

_PREFIX = "llmcloud:gateway:"

# KEYS: waiting set, waiting deadlines, then one running set per candidate backend.
# ARGV: ticket id, order, ttl in ms, queue bound (-1 for none), then max_parallel and
# weight of each candidate. Returns {1, candidate index} for a slot, {0, position} for a
# place in the queue, {2, waiting count} when the queue is full.
_CLAIM = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ticket, order = ARGV[1], tonumber(ARGV[2])
local deadline, bound = now + tonumber(ARGV[3]), tonumber(ARGV[4])

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

local free, best, best_load = 0, nil, nil
for index = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[index], '-inf', now)
  local running = redis.call('ZCARD', KEYS[index])
  local limit = tonumber(ARGV[3 + 2 * (index - 2)])
  local weight = tonumber(ARGV[4 + 2 * (index - 2)])
  if running < limit then
    free = free + limit - running
    local load = (running + 1) / weight
    if best == nil or load < best_load then
      best, best_load = index, load
    end
  end
end

local ahead = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. order)
if best ~= nil and ahead < free then
  redis.call('ZREM', KEYS[1], ticket)
  redis.call('ZREM', KEYS[2], ticket)
  redis.call('ZADD', KEYS[best], deadline, ticket)
  return {1, best - 3}
end

if not redis.call('ZSCORE', KEYS[1], ticket) then
  local waiting = redis.call('ZCARD', KEYS[1])
  if bound >= 0 and waiting >= bound then
    return {2, waiting}
  end
  redis.call('ZADD', KEYS[1], order, ticket)
end
redis.call('ZADD', KEYS[2], deadline, ticket)
return {0, ahead + 1}
"""

# KEYS: one waiting-deadlines set per model. Returns the unexpired tickets of each.
_COUNT_WAITING = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local counts = {}
for index = 1, #KEYS do
  counts[index] = redis.call('ZCOUNT', KEYS[index], '(' .. now, '+inf')
end
return counts
"""

# KEYS: sorted sets scored by deadline; ARGV: ttl in ms, then one ticket id per key.
_REFRESH = """
local time = redis.call('TIME')
local deadline = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[1])
for index = 1, #KEYS do
  redis.call('ZADD', KEYS[index], 'XX', deadline, ARGV[index + 1])
end
return #KEYS
"""


def _waiting_key(model: str) -> str:
    return f"{_PREFIX}waiting:{model}"


def _deadlines_key(model: str) -> str:
    return f"{_PREFIX}waiting-deadlines:{model}"


def _running_key(backend: BackendClient) -> str:
    return f"{_PREFIX}running:{backend.config.base_url}"


class SharedQueue:
    """Admits chats through the deployment-wide queue in Redis; see the module docstring.

    It works beside the instance's Dispatcher: a slot won in Redis is also counted on the
    local backend, so the status page and the metrics show this instance's share.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        dispatcher: Dispatcher,
        *,
        max_queue_per_model: int,
        busy_retry_after: int,
        ticket_ttl: float = TICKET_TTL_SECONDS,
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        self.client = client
        self.dispatcher = dispatcher
        self.max_queue_per_model = max_queue_per_model
        self.busy_retry_after = busy_retry_after
        self.ticket_ttl = ticket_ttl
        self.poll_interval = poll_interval
        self._claim = client.register_script(_CLAIM)
        self._refresh_script = client.register_script(_REFRESH)
        self._count_script = client.register_script(_COUNT_WAITING)
        self._waiting: dict[str, Ticket] = {}
        self._running: dict[str, Ticket] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._failing = False

    @classmethod
    def from_url(cls, url: str, dispatcher: Dispatcher, **options: Any) -> SharedQueue:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
        )
        return cls(client, dispatcher, **options)

    def queued(self) -> dict[str, int]:
        """Return the number of this instance's requests that wait in Redis, per model."""
        counts: dict[str, int] = {}
        for ticket in self._waiting.values():
            counts[ticket.model] = counts.get(ticket.model, 0) + 1
        return counts

    async def waiting_everywhere(self, models: list[str]) -> dict[str, int]:
        """Return the number of requests that wait for each model on every instance.

        Raises RedisError or OSError when Redis cannot be reached.
        """
        if not models:
            return {}
        keys = [_deadlines_key(model) for model in models]
        counts = await self._count_script(keys=keys)
        return {model: int(count) for model, count in zip(models, counts, strict=True) if count}

    def start(self) -> None:
        """Start moving the expiry of this instance's tickets forward."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="gateway-shared-queue"
            )

    async def close(self) -> None:
        """Stop the refresher, finish the pending removals and close the Redis connection."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.client.aclose()

    async def submit(
        self, model: str, exclude: frozenset[str] = frozenset(), *, retry_of: Ticket | None = None
    ) -> Ticket:
        """Claim a slot in Redis or queue there; raise GatewayBusy if the shared queue is full.

        A retry keeps its order of arrival and is never rejected for a full queue. Falls
        back to the Dispatcher when Redis fails.
        """
        try:
            order = retry_of.order if retry_of is not None else await self._next_order()
            ticket = Ticket(model=model, exclude=exclude, order=order)
            ticket.shared_id = uuid.uuid4().hex
            bound = -1 if retry_of is not None else self.max_queue_per_model
            await self._try_claim(ticket, bound)
        except (RedisError, OSError) as exc:
            self._log_failure(exc)
            return self.dispatcher.submit(model, exclude, retry_of=retry_of)
        self._log_recovery()
        return ticket

    async def positions(self, ticket: Ticket) -> AsyncGenerator[int, None]:
        """Yield the ticket's position each time it changes, until it takes a slot or ends.

        When Redis fails meanwhile, the ticket leaves the shared queue and the generator
        ends with the ticket unsettled, so that the caller queues it on this instance.
        """
        reported = 0
        while not ticket.settled:
            if ticket.position != reported:
                reported = ticket.position
                yield reported
            ticket.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ticket.changed.wait(), self.poll_interval)
            if ticket.settled:
                return
            try:
                await self._try_claim(ticket, -1)
            except (RedisError, OSError) as exc:
                self._log_failure(exc)
                self._forget(ticket)
                ticket.shared_id = None
                return

    def finish(self, ticket: Ticket) -> None:
        """Take the ticket's slot or place out of Redis; the caller frees the local slot."""
        shared_id = ticket.shared_id
        if shared_id is None:
            return
        self._forget(ticket)
        if ticket.backend is not None:
            self._remove(_running_key(ticket.backend), shared_id, wake_waiting=True)
        else:
            self._remove(_waiting_key(ticket.model), shared_id, _deadlines_key(ticket.model))

    async def _next_order(self) -> int:
        order: int = await self.client.incr(f"{_PREFIX}order")
        return order

    async def _try_claim(self, ticket: Ticket, bound: int) -> None:
        """Run the claim script once and apply its outcome to the ticket."""
        assert ticket.shared_id is not None
        candidates = self.dispatcher.candidates(ticket)
        if not candidates:
            self._forget(ticket)
            self._remove(_waiting_key(ticket.model), ticket.shared_id, _deadlines_key(ticket.model))
            ticket.stranded = True
            ticket.changed.set()
            return

        keys = [_waiting_key(ticket.model), _deadlines_key(ticket.model)]
        keys += [_running_key(backend) for backend in candidates]
        args: list[str | int | float] = [
            ticket.shared_id,
            ticket.order,
            int(self.ticket_ttl * 1000),
            bound,
        ]
        for backend in candidates:
            args += [backend.config.max_parallel, backend.config.weight]
        outcome, value = await self._claim(keys=keys, args=args)

        if outcome == 1:
            self._forget(ticket)
            self._running[ticket.shared_id] = ticket
            self.dispatcher.take_slot(ticket, candidates[int(value)])
        elif outcome == 2:
            raise GatewayBusy(
                f"model '{ticket.model}' is busy: {value} requests are already waiting across "
                "the web instances, the most allowed (gateway_max_queue_per_model); retry in "
                f"{self.busy_retry_after} s",
                retry_after=self.busy_retry_after,
            )
        else:
            self._waiting[ticket.shared_id] = ticket
            if ticket.position != int(value):
                ticket.position = int(value)
                ticket.changed.set()

    def _forget(self, ticket: Ticket) -> None:
        if ticket.shared_id is not None:
            self._waiting.pop(ticket.shared_id, None)
            self._running.pop(ticket.shared_id, None)

    def _remove(
        self,
        key: str,
        shared_id: str,
        deadlines_key: str | None = None,
        *,
        wake_waiting: bool = False,
    ) -> None:
        """Remove a ticket from Redis in the background; its expiry covers a failure.

        With `wake_waiting`, this instance's waiting requests ask for the freed slot at once.
        """

        async def remove() -> None:
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.zrem(key, shared_id)
                    if deadlines_key is not None:
                        pipe.zrem(deadlines_key, shared_id)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self._log_failure(exc)
            if wake_waiting:
                for waiting in self._waiting.values():
                    waiting.changed.set()

        try:
            task = asyncio.get_running_loop().create_task(remove())
        except RuntimeError:
            return  # No running loop: the ticket expires in Redis instead.
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ticket_ttl / 3)
            try:
                await self._refresh()
            except (RedisError, OSError) as exc:
                self._log_failure(exc)

    async def _refresh(self) -> None:
        keys: list[str] = []
        ids: list[str | int | float] = []
        for shared_id, ticket in self._waiting.items():
            keys.append(_deadlines_key(ticket.model))
            ids.append(shared_id)
        for shared_id, ticket in self._running.items():
            if ticket.backend is not None:
                keys.append(_running_key(ticket.backend))
                ids.append(shared_id)
        if keys:
            await self._refresh_script(keys=keys, args=[int(self.ticket_ttl * 1000), *ids])

    def _log_failure(self, exc: Exception) -> None:
        if not self._failing:
            logger.warning(
                "the shared queue in Redis failed, so chats queue per instance until it "
                "works again: %s",
                exc,
            )
        self._failing = True

    def _log_recovery(self) -> None:
        if self._failing:
            logger.info("the shared queue in Redis works again")
        self._failing = False
