"""The `/metrics` route, open to loopback clients and to holders of the metrics token.

A request is local when its client address is loopback and it carries no
`Forwarded` or `X-Forwarded-For` header: a reverse proxy on the same machine
connects from loopback too, and it marks what it relays with those headers.
Any other request must send `Authorization: Bearer <metrics_token>`; without
a configured token, remote scrapes get 403.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmcloud.monitoring.metrics import AppRegistry
from llmcloud.settings import Settings

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def metrics_router(settings: Settings, registry: AppRegistry) -> APIRouter:
    """Return a router with GET /metrics of `registry`, guarded by the loopback-or-token rule."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        problem = access_problem(request, token)
        if problem is not None:
            status, message = problem
            return JSONResponse({"error": message}, status, headers={"Cache-Control": "no-store"})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def access_problem(request: Request, token: str | None) -> tuple[int, str] | None:
    """Return the status and message that reject the request, or None when it may scrape."""
    if is_local_request(request):
        return None
    if token is None:
        return (
            403,
            "/metrics is served only to loopback clients; set metrics_token to scrape it "
            "from elsewhere with Authorization: Bearer <token>",
        )
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip(), token):
        return None
    return 401, "missing or invalid metrics token; send Authorization: Bearer <metrics_token>"


def is_local_request(request: Request) -> bool:
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
