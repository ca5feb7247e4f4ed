"""Snapshots of the gateway's backends and models, for the admin page and the model picker."""

from __future__ import annotations

from dataclasses import dataclass

from llmcloud.gateway.backend import BackendClient
from llmcloud.gateway.config import BackendKind


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    backends: tuple[str, ...]
    """Names of the healthy backends that list the model."""


@dataclass(frozen=True, slots=True)
class BackendStatus:
    name: str
    kind: BackendKind
    base_url: str
    weight: int
    max_parallel: int
    enabled: bool
    healthy: bool
    last_check: float | None
    """Unix time of the last health check, or None before the first one."""
    last_error: str | None
    models: tuple[str, ...]
    outstanding: int
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    backends: tuple[BackendStatus, ...]
    queued: dict[str, int]
    """Requests waiting for a backend, per model."""


def backend_status(client: BackendClient) -> BackendStatus:
    config = client.config
    state = client.state
    return BackendStatus(
        name=config.name,
        kind=config.kind,
        base_url=config.base_url,
        weight=config.weight,
        max_parallel=config.max_parallel,
        enabled=config.enabled,
        healthy=state.healthy,
        last_check=state.last_check,
        last_error=state.last_error,
        models=tuple(sorted(state.models)),
        outstanding=state.outstanding,
        consecutive_failures=state.consecutive_failures,
    )


def merge_models(clients: list[BackendClient]) -> list[ModelInfo]:
    """Merge the model lists of the routable backends, sorted by model name."""
    merged: dict[str, list[str]] = {}
    for client in clients:
        if not client.routable:
            continue
        for model in client.state.models:
            merged.setdefault(model, []).append(client.name)
    return [ModelInfo(name, tuple(names)) for name, names in sorted(merged.items())]
