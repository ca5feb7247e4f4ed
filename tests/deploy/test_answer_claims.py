"""Claims of a chat for one answer, in-process and shared by instances through Redis."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from llmcloud.web import answer_claims
from llmcloud.web.answer_claims import AnswerInProgress, UnheldClaim, answer_claims_for


@pytest.fixture(params=["local", "redis"])
def claims_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def _chat_id() -> str:
    return f"test-{secrets.token_hex(8)}"


def test_second_claim_waits_for_release(claims_url: str | None) -> None:
    async def scenario() -> None:
        # Two instances: with Redis, two clients of one server; without, one process.
        first = answer_claims_for(claims_url)
        second = answer_claims_for(claims_url) if claims_url else first
        chat_id = _chat_id()
        try:
            assert not await second.is_claimed(chat_id)
            claim = await first.claim(chat_id)
            assert await second.is_claimed(chat_id)
            with pytest.raises(AnswerInProgress) as refused:
                await second.claim(chat_id)
            other = await second.claim(_chat_id())
            await claim.release()
            assert not await second.is_claimed(chat_id)
            again = await second.claim(chat_id)
            await again.release()
            await other.release()
        finally:
            await first.close()
            if second is not first:
                await second.close()
        assert refused.value.status_code == 409
        assert "another tab" in refused.value.message

    asyncio.run(scenario())


def test_redis_claim_is_renewed_while_held(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_claims, "CLAIM_TTL_SECONDS", 1)
    monkeypatch.setattr(answer_claims, "RENEW_SECONDS", 0.2)

    async def scenario() -> None:
        claims = answer_claims_for(redis_url)
        chat_id = _chat_id()
        try:
            claim = await claims.claim(chat_id)
            await asyncio.sleep(1.5)
            with pytest.raises(AnswerInProgress):
                await claims.claim(chat_id)
            await claim.release()
        finally:
            await claims.close()

    asyncio.run(scenario())


def test_stale_holder_keeps_new_claim(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance that stalled past the claim's life must not end the next holder's claim."""
    monkeypatch.setattr(answer_claims, "CLAIM_TTL_SECONDS", 1)
    monkeypatch.setattr(answer_claims, "RENEW_SECONDS", 60)

    async def scenario() -> None:
        claims = answer_claims_for(redis_url)
        chat_id = _chat_id()
        try:
            stale = await claims.claim(chat_id)
            await asyncio.sleep(1.2)
            current = await claims.claim(chat_id)
            await stale.release()
            with pytest.raises(AnswerInProgress):
                await claims.claim(chat_id)
            await current.release()
        finally:
            await claims.close()

    asyncio.run(scenario())


def test_unreachable_redis_lets_the_answer_go_ahead(caplog: Any) -> None:
    async def scenario() -> None:
        claims = answer_claims_for("redis://127.0.0.1:1/0")
        try:
            first = await claims.claim("chat")
            second = await claims.claim("chat")
            await first.release()
            assert not await claims.is_claimed("chat")
        finally:
            await claims.close()
        assert isinstance(first, UnheldClaim)
        assert isinstance(second, UnheldClaim)

    asyncio.run(scenario())
    warnings = [record for record in caplog.records if "two tabs may run answers" in record.message]
    assert len(warnings) == 1
