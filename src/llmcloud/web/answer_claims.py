"""One answer at a time per chat, across sockets and instances.

A chat socket claims its chat before it saves a prompt, or removes the last
answer to regenerate it, and releases the claim when the answer ends. A
second socket on the same chat, such as another browser tab, gets an error
instead of starting a second answer beside the first, and nothing of the
chat changes.

Without `redis_url` the claims are kept in this process. With it, a claim
is the Redis key `llmcloud:answering:<chat_id>`, holding a random token,
that expires `CLAIM_TTL_SECONDS` after it was last renewed. The holder
renews it every `RENEW_SECONDS` while the answer runs, so the claim of an
instance that dies lapses on its own. An unreachable Redis lets the answer
go ahead, as it does for the live feed and the rate limit, and is logged
once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmcloud.db.errors import Conflict

log = logging.getLogger("llmcloud.web")

CLAIM_TTL_SECONDS = 60
RENEW_SECONDS = 20

# Delete the key only while it still contains this claim's token.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""


class AnswerInProgress(Conflict):
    """The chat is answering a prompt sent from another socket."""

    def __init__(self) -> None:
        super().__init__(
            "this chat is already answering a prompt, sent from another tab or window; "
            "wait for that answer to finish, or stop it there"
        )


class Claim(Protocol):
    async def release(self) -> None:
        """Give the chat back; later calls return at once, without awaiting anything."""


class AnswerClaims(Protocol):
    async def claim(self, chat_id: str) -> Claim:
        """Claim the chat for one answer, or raise AnswerInProgress."""

    async def is_claimed(self, chat_id: str) -> bool:
        """Return whether an answer of the chat is running; False when that is unknown."""

    async def close(self) -> None: ...


def answer_claims_for(redis_url: str | None) -> AnswerClaims:
    """Return claims kept in Redis when `redis_url` is set, else in this process."""
    if redis_url:
        return RedisAnswerClaims(aioredis.Redis.from_url(redis_url))
    return LocalAnswerClaims()


class LocalAnswerClaims:
    """Claims of the chat sockets of this process."""

    def __init__(self) -> None:
        self.answering: set[str] = set()

    async def claim(self, chat_id: str) -> Claim:
        if chat_id in self.answering:
            raise AnswerInProgress()
        self.answering.add(chat_id)
        return LocalClaim(self, chat_id)

    async def is_claimed(self, chat_id: str) -> bool:
        return chat_id in self.answering

    async def close(self) -> None:
        self.answering.clear()


class LocalClaim:
    def __init__(self, claims: LocalAnswerClaims, chat_id: str) -> None:
        self.claims = claims
        self.chat_id = chat_id
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            self.claims.answering.discard(self.chat_id)


class RedisAnswerClaims:
    """Claims shared by every instance that uses the same Redis server."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._failing = False

    @staticmethod
    def key(chat_id: str) -> str:
        return f"llmcloud:answering:{chat_id}"

    async def claim(self, chat_id: str) -> Claim:
        key, token = self.key(chat_id), secrets.token_hex(16)
        try:
            claimed = await self.client.set(key, token, nx=True, ex=CLAIM_TTL_SECONDS)
        except (RedisError, OSError) as exc:
            self._unreachable(chat_id, exc)
            return UnheldClaim()
        self._failing = False
        if not claimed:
            raise AnswerInProgress()
        return RedisClaim(self, key, token)

    async def is_claimed(self, chat_id: str) -> bool:
        try:
            return bool(await self.client.exists(self.key(chat_id)))
        except (RedisError, OSError) as exc:
            self._unreachable(chat_id, exc)
            return False

    def _unreachable(self, chat_id: str, exc: Exception) -> None:
        if not self._failing:
            log.warning(
                "chat %s: claiming the chat in Redis failed, "
                "so two tabs may run answers at once: %s",
                chat_id,
                exc,
            )
        self._failing = True

    async def close(self) -> None:
        await self.client.aclose()


class RedisClaim:
    """A claim in Redis, renewed in the background until it is released."""

    def __init__(self, claims: RedisAnswerClaims, key: str, token: str) -> None:
        self.client = claims.client
        self.key = key
        self.token = token
        self.released = False
        self._renewal = asyncio.create_task(self._renew(), name=f"renew-{key}")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self.client.eval(_RENEW_SCRIPT, 1, self.key, self.token, CLAIM_TTL_SECONDS)
            except (RedisError, OSError) as exc:
                log.warning("cannot renew %s in Redis: %s", self.key, exc)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewal
        try:
            await self.client.eval(_RELEASE_SCRIPT, 1, self.key, self.token)
        except (RedisError, OSError) as exc:
            log.warning("cannot release %s in Redis; it lapses on its own: %s", self.key, exc)


class UnheldClaim:
    """A claim not taken because Redis is unreachable; releasing it does nothing."""

    async def release(self) -> None:
        return None
