"""One backend at run time: its connection pool, its health and the requests it is serving."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from llmcloud import __version__
from llmcloud.gateway.config import Backend
from llmcloud.gateway.errors import InvalidBackends
from llmcloud.gateway.http import ConnectError, ConnectionPool, ConnectTimeout, HTTPError, Response
from llmcloud.gateway.protocols import UpstreamError, error_message, protocol_for
from llmcloud.monitoring.metrics import backend_errors

logger = logging.getLogger("llmcloud.gateway")

# Keep-alive connections kept open beyond the ones in use, for health checks and bursts.
_SPARE_CONNECTIONS = 4
# The largest model list that a health check reads.
_MAX_MODEL_LIST_BYTES = 16 * 1024 * 1024
# json.dumps() with any argument builds a new encoder on every call; this one is built once.
_encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass
class BackendState:
    healthy: bool = False
    last_check: float | None = None
    """Unix time of the last health check, or None before the first one."""
    last_error: str | None = None
    models: frozenset[str] = field(default_factory=frozenset)
    """The models in the backend's last good model list; kept while it is unhealthy."""
    listed: bool = False
    """Whether the backend has ever returned its model list."""
    outstanding: int = 0
    consecutive_failures: int = 0
    last_picked: int = 0
    """Sequence number of the last request routed here, to break ties round-robin."""


class BackendFailure(Exception):
    """A request to a backend failed before its first token.

    `retry` is True when another backend may succeed because this one is
    down, busy or broken, and False when it rejected the request itself.
    """

    def __init__(self, message: str, *, retry: bool, status_code: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.status_code = status_code


class BackendClient:
    """A backend's config, live state and connection pool."""

    def __init__(
        self,
        config: Backend,
        *,
        connect_timeout: float,
        read_timeout: float,
        health_timeout: float,
        failures_before_unhealthy: int,
    ) -> None:
        self.config = config
        self.name = config.name
        self.protocol = protocol_for(config.kind)
        self.state = BackendState()
        self.retired = False
        self.health_timeout = health_timeout
        self.failures_before_unhealthy = failures_before_unhealthy
        headers = {"User-Agent": f"llmcloud-gateway/{__version__}"}
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.http = ConnectionPool(
            config.api_base_url(),
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_idle=config.max_parallel + _SPARE_CONNECTIONS,
            ssl_context=_tls_context(config),
        )

    @property
    def routable(self) -> bool:
        return self.config.enabled and self.state.healthy and not self.retired

    def serves(self, model: str) -> bool:
        models = self.state.models
        if model in models:
            return True
        # Ollama reads a name without a tag as NAME:latest.
        return self.config.kind == "ollama" and ":" not in model and f"{model}:latest" in models

    async def aclose(self) -> None:
        await self.http.aclose()

    # Health

    async def check_health(self) -> None:
        """Fetch the model list and update the state: healthy with its models, or the error.

        A check that times out while the backend's streams deliver data leaves
        a healthy backend in rotation: a loaded server, or a loaded event loop
        in this process, can delay the model list, but data that arrives
        shows that the backend is up.
        """
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.health_timeout):
                models = await self._fetch_models()
        except TimeoutError:
            if self.state.healthy and self.http.last_received >= started:
                logger.info(
                    "health check of backend %s timed out after %g s; it stays in rotation "
                    "because its streams delivered data meanwhile",
                    self.name,
                    self.health_timeout,
                )
            else:
                self._mark_unhealthy(f"health check timed out after {self.health_timeout:g} s")
        except (HTTPError, UpstreamError, ValueError) as exc:
            self._mark_unhealthy(f"health check failed: {describe_http_error(exc)}")
        else:
            self._mark_healthy(models)
        self.state.last_check = time.time()

    async def _fetch_models(self) -> frozenset[str]:
        response = await self.http.request("GET", self.protocol.models_path)
        try:
            content = await response.read(_MAX_MODEL_LIST_BYTES)
        finally:
            response.close()
        if response.status_code != 200:
            raise UpstreamError(_status_text(response, content))
        return frozenset(self.protocol.model_names(json.loads(content)))

    def _mark_healthy(self, models: frozenset[str]) -> None:
        if not self.state.healthy:
            logger.info("backend %s is healthy, serving %d models", self.name, len(models))
        self.state.healthy = True
        self.state.models = models
        self.state.listed = True
        self.state.last_error = None
        self.state.consecutive_failures = 0

    def _mark_unhealthy(self, error: str) -> None:
        if self.state.healthy or self.state.last_check is None:
            logger.warning("backend %s is out of rotation: %s", self.name, error)
        self.state.healthy = False
        self.state.last_error = error

    # Requests

    async def open_chat(self, body: dict[str, Any]) -> Response:
        """Send a streaming chat request and return the response once its status is 200."""
        data = _encode_compact(body).encode()
        try:
            response = await self.http.request("POST", self.protocol.chat_path, data)
        except (ConnectError, ConnectTimeout) as exc:
            self.record_failure(describe_http_error(exc), down=True)
            raise BackendFailure(describe_http_error(exc), retry=True) from None
        if response.status_code == 200:
            return response

        content = await _read_some(response)
        raise self._status_failure(body["model"], response, content)

    def _status_failure(self, model: str, response: Response, content: bytes) -> BackendFailure:
        status = response.status_code
        message = _status_text(response, content)
        if status == 404:
            # The model list was stale; the next health check brings it up to date.
            self.state.models = self.state.models - {model, f"{model}:latest"}
            return BackendFailure(message, retry=True, status_code=404)
        if status in (429, 503):
            return BackendFailure(message, retry=True, status_code=503)
        if 400 <= status < 500 and status not in (401, 403, 408):
            return BackendFailure(message, retry=False, status_code=status)
        self.record_failure(message)
        return BackendFailure(message, retry=True)

    def record_failure(self, error: str, *, down: bool = False) -> None:
        """Count a failed request; take the backend out of rotation when it is down or failing."""
        self.state.consecutive_failures += 1
        self.state.last_error = error
        backend_errors.labels(self.name).inc()
        if self.state.healthy and (
            down or self.state.consecutive_failures >= self.failures_before_unhealthy
        ):
            logger.warning("backend %s is out of rotation: %s", self.name, error)
            self.state.healthy = False

    def record_success(self) -> None:
        self.state.consecutive_failures = 0


def describe_http_error(exc: BaseException) -> str:
    """Describe a transport error in a few words, naming its kind."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _status_text(response: Response, content: bytes) -> str:
    try:
        detail = error_message(json.loads(content))
    except ValueError:
        detail = content[:300].decode("utf-8", "replace").strip() or "(empty body)"
    return f"HTTP {response.status_code} from {response.path}: {detail}"


async def _read_some(response: Response, limit: int = 4096) -> bytes:
    """Read at most `limit` bytes of an error body, then close the response."""
    try:
        return await response.read(limit)
    except HTTPError:
        return b""
    finally:
        response.close()


def _tls_context(config: Backend) -> ssl.SSLContext:
    """Return the TLS settings: the CA bundle when one is set, else httpx's default CAs."""
    try:
        if config.ca_bundle is None:
            context = httpx.create_ssl_context()
        else:
            context = ssl.create_default_context(cafile=str(config.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidBackends(
            f"backend {config.name}: cannot load the CA bundle {config.ca_bundle}: {exc}; "
            "expected a PEM file of CA certificates"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context
