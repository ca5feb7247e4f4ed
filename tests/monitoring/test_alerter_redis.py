"""Two alerters of one deployment share Redis, and the webhook gets each message once.

The tests use the Redis server on 127.0.0.1:6379, each under a key prefix of its
own that it deletes at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from llmcloud.monitoring.alert_claims import LocalClaims, RedisClaims
from llmcloud.monitoring.alerter import Alerter
from llmcloud.monitoring.samples import Sample
from llmcloud.settings import Settings
from tests.monitoring.receivers import WebhookReceiver

REDIS_URL = "redis://127.0.0.1:6379/0"
REPEAT = 3600.0


@pytest.fixture
def key_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server answers on {REDIS_URL}: {exc}")
    prefix = f"llmcloud-test:{uuid.uuid4().hex}:alert:"
    yield prefix
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def instance(tmp_path: Path, webhook: WebhookReceiver, key_prefix: str) -> Alerter:
    settings = Settings(
        data_dir=tmp_path,
        alert_webhook_url=webhook.url,
        alert_repeat_interval=REPEAT,
        redis_url=REDIS_URL,
    )
    claims = RedisClaims(aioredis.Redis.from_url(REDIS_URL), key_prefix=key_prefix)
    return Alerter(settings, claims=claims, pending={})


def disk_sample(at: float, free_percent: float) -> Sample:
    return Sample(time=at, disk_free_percent=free_percent)


async def evaluate_all(alerters: list[Alerter], sample: Sample) -> None:
    await asyncio.gather(*(alerter.evaluate(sample) for alerter in alerters))


def test_two_alerters_notify_once(
    tmp_path: Path, webhook: WebhookReceiver, key_prefix: str
) -> None:
    async def scenario() -> None:
        first = instance(tmp_path, webhook, key_prefix)
        second = instance(tmp_path, webhook, key_prefix)
        try:
            await evaluate_all([first, second], disk_sample(0, 3.0))
            await evaluate_all([first, second], disk_sample(60, 3.0))
            await second.evaluate(disk_sample(120, 3.0))
            await first.evaluate(disk_sample(120, 3.0))
            await evaluate_all([first, second], disk_sample(180, 50.0))
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())

    texts = webhook.texts()
    assert len(texts) == 2
    assert "[FIRING] DiskLow" in texts[0]
    assert "[RESOLVED] DiskLow" in texts[1]


def test_two_alerters_repeat_once_per_interval(
    tmp_path: Path, webhook: WebhookReceiver, key_prefix: str
) -> None:
    async def scenario() -> None:
        first = instance(tmp_path, webhook, key_prefix)
        second = instance(tmp_path, webhook, key_prefix)
        try:
            await first.evaluate(disk_sample(0, 3.0))
            await second.evaluate(disk_sample(30, 3.0))
            await evaluate_all([first, second], disk_sample(REPEAT - 1, 3.0))
            await second.evaluate(disk_sample(REPEAT + 30, 3.0))
            await first.evaluate(disk_sample(REPEAT + 30, 3.0))
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())

    texts = webhook.texts()
    assert len(texts) == 2
    assert all("[FIRING] DiskLow" in text for text in texts)


def test_restarted_alerter_does_not_repeat(
    tmp_path: Path, webhook: WebhookReceiver, key_prefix: str
) -> None:
    async def scenario() -> None:
        first = instance(tmp_path, webhook, key_prefix)
        await first.evaluate(disk_sample(0, 3.0))
        await first.close()
        restarted = instance(tmp_path, webhook, key_prefix)
        try:
            await restarted.evaluate(disk_sample(60, 3.0))
            await restarted.evaluate(disk_sample(120, 50.0))
        finally:
            await restarted.close()

    asyncio.run(scenario())

    texts = webhook.texts()
    assert len(texts) == 2
    assert "[FIRING] DiskLow" in texts[0]
    assert "[RESOLVED] DiskLow" in texts[1]


def test_failed_send_leaves_alert_to_other_alerter(
    tmp_path: Path, webhook: WebhookReceiver, key_prefix: str
) -> None:
    async def scenario() -> None:
        first = instance(tmp_path, webhook, key_prefix)
        second = instance(tmp_path, webhook, key_prefix)
        try:
            webhook.status = 500
            await first.evaluate(disk_sample(0, 3.0))
            webhook.status = 200
            await second.evaluate(disk_sample(15, 3.0))
            await first.evaluate(disk_sample(30, 3.0))
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())

    texts = webhook.texts()
    assert len(texts) == 2  # the rejected post, then the one that the second alerter sent
    assert all("[FIRING] DiskLow" in text for text in texts)


def test_failed_resolution_is_sent_again(
    tmp_path: Path, webhook: WebhookReceiver, key_prefix: str
) -> None:
    async def scenario() -> None:
        first = instance(tmp_path, webhook, key_prefix)
        second = instance(tmp_path, webhook, key_prefix)
        try:
            await evaluate_all([first, second], disk_sample(0, 3.0))
            webhook.status = 500
            await first.evaluate(disk_sample(60, 50.0))
            webhook.status = 200
            await second.evaluate(disk_sample(75, 50.0))
            await first.evaluate(disk_sample(120, 50.0))
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())

    texts = webhook.texts()
    assert len(texts) == 3
    assert "[FIRING] DiskLow" in texts[0]
    assert "[RESOLVED] DiskLow" in texts[1]  # rejected with 500
    assert "[RESOLVED] DiskLow" in texts[2]


def test_unreachable_redis_sends_from_each_alerter(
    tmp_path: Path, webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 1 on loopback has no listener, so every command fails to connect.
    unreachable = "redis://127.0.0.1:1/0"
    settings = Settings(data_dir=tmp_path, alert_webhook_url=webhook.url, redis_url=unreachable)

    async def scenario() -> None:
        first = Alerter(settings, pending={})
        second = Alerter(settings, pending={})
        try:
            await first.evaluate(disk_sample(0, 3.0))
            await second.evaluate(disk_sample(0, 3.0))
            await first.evaluate(Sample(time=60, disk_free_percent=3.0, renewal_failures=1.0))
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())

    warnings = [
        record
        for record in caplog.records
        if record.name == "llmcloud.monitoring" and "through Redis" in record.message
    ]
    assert len(webhook.texts()) == 3
    assert len(warnings) == 2  # once per alerter, not once per evaluation


def test_alerter_claims_follow_redis_url(tmp_path: Path) -> None:
    async def scenario() -> tuple[object, object]:
        shared = Alerter(Settings(data_dir=tmp_path, redis_url=REDIS_URL))
        alone = Alerter(Settings(data_dir=tmp_path))
        await shared.close()
        await alone.close()
        return shared.claims, alone.claims

    shared_claims, local_claims = asyncio.run(scenario())

    assert isinstance(shared_claims, RedisClaims)
    assert isinstance(local_claims, LocalClaims)
