"""The ACME HTTP-01 challenge route: /.well-known/acme-challenge/{token} (RFC 8555, 8.3)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from llmcloud.tls.challenges import ChallengeStore
from llmcloud.web.deps import WebState

router = APIRouter()


@router.get("/.well-known/acme-challenge/{token}", include_in_schema=False)
async def acme_challenge(token: str, request: Request) -> PlainTextResponse:
    state: WebState = request.app.state.web
    answer = ChallengeStore(state.settings.data_dir).get(token)
    if answer is None:
        return PlainTextResponse(f"no pending ACME challenge for token {token!r}", status_code=404)
    return PlainTextResponse(answer, media_type="application/octet-stream")
