"""`/healthz` (the process is alive) and `/readyz` (it can serve chats)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from llmcloud.db.health import database_problem
from llmcloud.gateway import BackendStatus
from llmcloud.monitoring.health import disk_problem
from llmcloud.web.deps import web_state

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Return 200 when the database and a backend are reachable, else 503 naming what failed."""
    state = web_state(request)
    failed: dict[str, str] = {}

    problem = await run_in_threadpool(database_problem, state.db)
    if problem is not None:
        failed["database"] = problem

    backends = state.models.status().backends
    healthy = [backend.name for backend in backends if backend.enabled and backend.healthy]
    if not healthy:
        failed["backends"] = _describe_backends(backends)

    problem = disk_problem(state.settings)
    if problem is not None:
        failed["disk"] = problem

    if failed:
        return JSONResponse({"status": "unavailable", "failed": failed}, 503)
    return JSONResponse({"status": "ok", "backends": healthy})


def _describe_backends(backends: tuple[BackendStatus, ...]) -> str:
    if not backends:
        return "no backend is configured; set gateway_backends or run `llmcloud engine`"
    parts = []
    for backend in backends:
        if not backend.enabled:
            parts.append(f"{backend.name}: disabled")
        else:
            parts.append(f"{backend.name}: {backend.last_error or 'not checked yet'}")
    return "no healthy backend (" + "; ".join(parts) + ")"
