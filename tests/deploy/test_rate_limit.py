"""Per-account prompt limits, counted in Redis across web instances."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from llmcloud.web import rate_limit
from llmcloud.web.rate_limit import (
    LocalRateLimiter,
    RateLimiter,
    RateLimitExceeded,
    RedisRateLimiter,
    rate_limiter_for,
)
from tests.deploy.conftest import free_port, start_web
from tests.deploy.test_live_streams import (
    FAKE_MODEL,
    SHARED_KEY,
    _read_until_end,
    _sign_up_and_create_chat,
    _socket,
)
from tests.gateway.fake_backend import FakeBackend


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _hit_all(limiters: list[RateLimiter], key: str) -> list[int | None]:
    """Hit each limiter in turn; return None for a pass, else the Retry-After seconds."""

    async def run() -> list[int | None]:
        outcomes: list[int | None] = []
        for limiter in limiters:
            try:
                await limiter.hit(key)
                outcomes.append(None)
            except RateLimitExceeded as exc:
                outcomes.append(exc.retry_after)
        for limiter in {id(limiter): limiter for limiter in limiters}.values():
            await limiter.close()
        return outcomes

    return asyncio.run(run())


@pytest.fixture(params=["local", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Callable[[int, FakeClock], RateLimiter]:
    """A factory of limiters on a fake clock, counting in this process or in Redis."""
    if request.param == "local":
        return LocalRateLimiter
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{secrets.token_hex(6)}"

    class PrefixedRedisLimiter(RedisRateLimiter):
        async def hit(self, key: str) -> None:
            await super().hit(f"{prefix}:{key}")

    def make(limit: int, clock: FakeClock) -> RateLimiter:
        return PrefixedRedisLimiter(aioredis.Redis.from_url(url), limit, clock)

    return make


def _hits_at(limiter: RateLimiter, clock: FakeClock, times: list[float]) -> list[int | None]:
    """Hit the limiter at each of `times`; return None for a pass, else the Retry-After."""

    async def run() -> list[int | None]:
        outcomes: list[int | None] = []
        for now in times:
            clock.now = now
            try:
                await limiter.hit("chat:1")
                outcomes.append(None)
            except RateLimitExceeded as exc:
                outcomes.append(exc.retry_after)
        await limiter.close()
        return outcomes

    return asyncio.run(run())


def test_limiter_rejects_past_limit(make_limiter: Callable[..., RateLimiter]) -> None:
    clock = FakeClock(0)
    limiter = make_limiter(2, clock)

    assert _hits_at(limiter, clock, [60_015.5, 60_016.0, 60_020.0]) == [None, None, 56]


def test_limiter_window_slides(make_limiter: Callable[..., RateLimiter]) -> None:
    clock = FakeClock(0)
    limiter = make_limiter(2, clock)
    # Fixed one-minute windows would let the third request through: it opens a new window.
    times = [59_970.0, 59_990.0, 60_000.0, 60_030.0, 60_050.5, 60_051.0]

    assert _hits_at(limiter, clock, times) == [None, None, 30, None, None, 39]


def test_rejected_requests_not_counted(make_limiter: Callable[..., RateLimiter]) -> None:
    clock = FakeClock(0)
    limiter = make_limiter(1, clock)

    assert _hits_at(limiter, clock, [100.0, 130.0, 159.0, 160.0]) == [None, 30, 1, None]


def test_local_limiter_counts_keys_apart() -> None:
    limiter = LocalRateLimiter(1, FakeClock(60_000.0))

    async def run() -> None:
        await limiter.hit("chat:1")
        await limiter.hit("chat:2")
        with pytest.raises(RateLimitExceeded):
            await limiter.hit("chat:1")

    asyncio.run(run())


def test_local_limiter_forgets_idle_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "SWEEP_EVERY", 3)
    clock = FakeClock(1_000.0)
    limiter = LocalRateLimiter(5, clock)

    async def run() -> list[str]:
        await limiter.hit("login:address:192.0.2.1")
        await limiter.hit("login:address:192.0.2.2")
        clock.now += 61
        await limiter.hit("login:address:192.0.2.3")
        return sorted(limiter._times)

    assert asyncio.run(run()) == ["login:address:192.0.2.3"]


def test_limit_message_names_setting() -> None:
    error = RateLimitExceeded(5, 30)

    assert error.status_code == 429
    assert "web_chat_rate_limit" in error.message
    assert "retry in 30 s" in error.message


def test_zero_limit_never_rejects() -> None:
    limiter = rate_limiter_for(0, None)

    assert _hit_all([limiter] * 5, "chat:1") == [None] * 5


def test_redis_limiter_is_shared_by_instances(redis_url: str) -> None:
    key = f"chat:test-{secrets.token_hex(6)}"
    first = rate_limiter_for(2, redis_url)
    second = rate_limiter_for(2, redis_url)

    outcomes = _hit_all([first, second, first], key)

    assert outcomes[:2] == [None, None]
    assert outcomes[2] is not None


def test_redis_limiter_lets_prompts_through_when_down(caplog: pytest.LogCaptureFixture) -> None:
    limiter = rate_limiter_for(1, f"redis://127.0.0.1:{free_port()}/0")

    with caplog.at_level(logging.WARNING, logger="llmcloud.web"):
        outcomes = _hit_all([limiter, limiter, limiter], "chat:1")

    assert outcomes == [None, None, None]
    warnings = [record for record in caplog.records if "rate limit not applied" in record.message]
    assert len(warnings) == 1


def test_prompt_limit_holds_across_instances(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    backend = FakeBackend((FAKE_MODEL,)).start()
    settings = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "session_secret_key": SHARED_KEY,
        "web_chat_rate_limit": "2",
        "gateway_backends": json.dumps(
            [{"name": "fake", "kind": "openai", "base_url": backend.url}]
        ),
    }
    first = start_web(tmp_path / "first", **settings)
    second = start_web(tmp_path / "second", **settings)
    prompt = json.dumps({"type": "send", "content": "Hi", "model": FAKE_MODEL})
    try:
        with httpx.Client(timeout=10.0) as client:
            chat_id = _sign_up_and_create_chat(client, first.url)
            with _socket(first.url, f"/ws/chats/{chat_id}", client) as chat:
                answers = []
                for _ in range(2):
                    chat.send(prompt)
                    answers.append(_read_until_end(chat))
            with _socket(second.url, f"/ws/chats/{chat_id}", client) as chat:
                chat.send(prompt)
                rejected = json.loads(chat.recv(timeout=15))
    finally:
        first.stop()
        second.stop()
        backend.stop()

    assert [events[-1]["type"] for events in answers] == ["done", "done"]
    assert rejected["type"] == "error"
    assert "rate limit of 2 prompts per minute" in rejected["message"]
