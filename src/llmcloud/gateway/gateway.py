"""The gateway: the web app's one way to the model backends.

It keeps the list of backends: llmcloud engines, Ollama servers and any
OpenAI-compatible server such as vLLM. It checks their health in the
background and merges their model lists. Chats run through the dispatcher
(routing and queues) and the relay (failover and streaming).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from llmcloud.gateway.backend import BackendClient
from llmcloud.gateway.config import Backend, keep_alive_wire_value
from llmcloud.gateway.dispatch import Dispatcher
from llmcloud.gateway.errors import InvalidBackends, NoBackendAvailable, UnknownModel
from llmcloud.gateway.events import ChatEvent
from llmcloud.gateway.relay import ChatRelay
from llmcloud.gateway.request import ChatRequest, build_chat_request
from llmcloud.gateway.shared_queue import SharedQueue
from llmcloud.gateway.status import GatewayStatus, ModelInfo, backend_status, merge_models

if TYPE_CHECKING:
    from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.gateway")

# Retry-After for a full queue, in seconds. NOTE: a fixed guess; the gateway does not
# measure how fast its queues drain.
BUSY_RETRY_AFTER_SECONDS = 5


class Gateway:
    """Routes chats to backends; create it, `await start()`, and `await close()` at shutdown.

    keep_alive is sent with every chat to Ollama-API backends (a duration such
    as "5m", or seconds). health_interval is the time between two health checks
    of a backend, health_timeout the limit of one. A request waits in its
    model's queue when every backend is full, and at most max_queue_per_model
    requests wait per model. connect_timeout limits each TCP and TLS connect.
    first_token_timeout limits the wait for the first token, after which the
    gateway fails over. It also limits any later pause between two lines, after
    which the chat fails. A backend leaves rotation when a health check fails, when a
    connection to it is refused, or after failures_before_unhealthy failed
    requests in a row; a passing health check brings it back. Times are seconds.

    With `redis_url`, the queues, max_queue_per_model and each backend's max_parallel hold
    for every gateway on that Redis together (see llmcloud.gateway.shared_queue).

    A gateway belongs to one event loop, the one that runs `start()`.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        keep_alive: str = "5m",
        health_interval: float = 2.0,
        health_timeout: float = 5.0,
        max_queue_per_model: int = 32,
        connect_timeout: float = 3.0,
        first_token_timeout: float = 120.0,
        failures_before_unhealthy: int = 3,
        redis_url: str | None = None,
    ) -> None:
        _check_positive(
            health_interval=health_interval,
            health_timeout=health_timeout,
            connect_timeout=connect_timeout,
            first_token_timeout=first_token_timeout,
            failures_before_unhealthy=failures_before_unhealthy,
        )
        if max_queue_per_model < 0:
            raise ValueError(f"max_queue_per_model must be 0 or more, not {max_queue_per_model}")
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.failures_before_unhealthy = failures_before_unhealthy
        self._dispatcher = Dispatcher(max_queue_per_model, BUSY_RETRY_AFTER_SECONDS)
        self._shared: SharedQueue | None = None
        if redis_url:
            self._shared = SharedQueue.from_url(
                redis_url,
                self._dispatcher,
                max_queue_per_model=max_queue_per_model,
                busy_retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        self._relay = ChatRelay(
            self._dispatcher,
            keep_alive=keep_alive_wire_value(keep_alive),
            first_token_timeout=first_token_timeout,
            check_model=self._check_model,
            release=self._release,
            shared=self._shared,
        )
        self._clients: dict[str, BackendClient] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False
        self.set_backends(backends)

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        return cls(
            default_backends(settings),
            keep_alive=settings.gateway_keep_alive,
            health_interval=settings.gateway_health_interval,
            max_queue_per_model=settings.gateway_max_queue_per_model,
            connect_timeout=settings.gateway_connect_timeout,
            first_token_timeout=settings.gateway_first_token_timeout,
            redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        )

    # Lifecycle

    async def start(self) -> None:
        """Check every backend once, then keep checking them in the background."""
        self._started = True
        if self._shared is not None:
            self._shared.start()
        clients = [client for client in self._clients.values() if client.config.enabled]
        await asyncio.gather(*(self._check(client) for client in clients))
        for client in clients:
            self._watch(client, check_first=False)
        healthy = sum(1 for client in clients if client.routable)
        logger.info("gateway started: %d of %d backends healthy", healthy, len(self._clients))

    async def close(self) -> None:
        """Stop the health checks and close every connection.

        Streams in progress end with Failed, queued requests with Failed, and
        later chats raise NoBackendAvailable.
        """
        self._started = False
        for client in self._clients.values():
            client.retired = True
        self._dispatcher.dispatch()
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))
        if self._shared is not None:
            await self._shared.close()
        logger.info("gateway closed")

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Replace the list of backends, as when an admin adds, changes or removes one.

        A backend whose config is unchanged keeps its state and connections. A
        new or changed one joins rotation after its first health check, which
        starts at once when the gateway runs. A removed one takes no new
        requests, and its connections close when its last request ends.
        """
        configs = list(backends)
        _check_unique_names(configs)
        clients: dict[str, BackendClient] = {}
        created: list[BackendClient] = []
        for config in configs:
            current = self._clients.get(config.name)
            if current is not None and current.config == config:
                clients[config.name] = current
            else:
                client = self._new_client(config)
                clients[config.name] = client
                created.append(client)

        for name, old in self._clients.items():
            if clients.get(name) is not old:
                self._retire(old)
        self._clients = clients
        self._dispatcher.backends = list(clients.values())
        if self._started:
            for client in created:
                if client.config.enabled:
                    self._watch(client, check_first=True)
        self._dispatcher.dispatch()

    # Queries

    async def models(self) -> list[ModelInfo]:
        """Return the models of the healthy backends, merged, with the backends that list each."""
        return merge_models(list(self._clients.values()))

    def status(self) -> GatewayStatus:
        """Return every backend's config and health, and the queue lengths, for the admin page.

        With Redis, the queue lengths count this instance's waiting requests only.
        """
        queued = self._dispatcher.queued()
        if self._shared is not None:
            for model, count in self._shared.queued().items():
                queued[model] = queued.get(model, 0) + count
        return GatewayStatus(
            backends=tuple(backend_status(client) for client in self._clients.values()),
            queued=queued,
        )

    async def queue_lengths(self) -> tuple[dict[str, int], bool]:
        """Return the waiting requests per model, and whether they are the whole deployment's.

        With Redis, the counts cover every instance, plus this instance's requests that
        wait in its own queue while Redis fails. Without Redis, or when Redis cannot
        be reached, they cover this instance only, and the flag is False.
        """
        queued = self.status().queued
        if self._shared is None:
            return queued, False
        models = sorted({info.name for info in await self.models()} | set(queued))
        try:
            everywhere = await self._shared.waiting_everywhere(models)
        except (RedisError, OSError) as exc:
            logger.warning("counting the deployment's queued chats in Redis failed: %s", exc)
            return queued, False
        for model, count in self._dispatcher.queued().items():
            everywhere[model] = everywhere.get(model, 0) + count
        return everywhere, True

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        system: str | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Start a chat and return its events (see llmcloud.gateway.events).

        `messages` are {"role", "content"} objects; `options` are Ollama's
        model options; `system`, when given, goes first as a system message.
        Nothing happens until the first `anext()`, which raises before any
        event: InvalidChatRequest (400), UnknownModel (404), GatewayBusy (503,
        with retry_after) when the model's queue is full, NoBackendAvailable
        (503) when no healthy backend serves the model. Close the iterator
        (`contextlib.aclosing`) or cancel its task to stop early: that closes
        the backend's stream, so the backend stops generating.
        """
        return self._relay.chat(
            model, functools.partial(build_chat_request, model, messages, options, system)
        )

    def chat_request(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        """Start a chat from a request that the caller built and checked, as chat() does.

        Nothing in `request` is checked again, so each part must be within
        what build_chat_request() accepts. The /v1 API checks its requests by
        OpenAI's narrower limits, and comes this way to skip a second
        validation.
        """
        return self._relay.chat(request.model, lambda: request)

    # Internals

    def _check_model(self, model: str) -> None:
        """Raise UnknownModel or NoBackendAvailable unless a healthy backend lists the model."""
        for client in self._clients.values():
            if client.routable and client.serves(model):
                return
        enabled = [client for client in self._clients.values() if client.config.enabled]
        if not enabled:
            raise NoBackendAvailable(
                "no backend is enabled; add one in gateway_backends or on the admin page",
                retry_after=self._retry_after(),
            )
        serving = [client for client in enabled if client.serves(model)]
        if any(client.routable for client in serving):
            return
        if serving:
            raise NoBackendAvailable(
                f"model '{model}' is served by {_describe_down(serving)}, and none of them is "
                f"healthy now; retry in {self._retry_after()} s",
                retry_after=self._retry_after(),
            )
        unlisted = [client for client in enabled if not client.state.listed]
        if unlisted:
            raise NoBackendAvailable(
                f"model '{model}' is not listed by any backend that returned its model list, and "
                f"{_describe_down(unlisted)} has not returned a model list yet; retry in "
                f"{self._retry_after()} s",
                retry_after=self._retry_after(),
            )
        known = sorted({name for client in enabled for name in client.state.models})
        raise UnknownModel(model, known)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.health_interval))

    def _release(self, client: BackendClient) -> None:
        self._dispatcher.release(client)
        if client.retired and client.state.outstanding == 0:
            self._close_later(client)

    def _new_client(self, config: Backend) -> BackendClient:
        return BackendClient(
            config,
            connect_timeout=self.connect_timeout,
            read_timeout=self.first_token_timeout,
            health_timeout=self.health_timeout,
            failures_before_unhealthy=self.failures_before_unhealthy,
        )

    def _retire(self, client: BackendClient) -> None:
        client.retired = True
        watcher = self._watchers.pop(client.name, None)
        if watcher is not None:
            watcher.cancel()
        if client.state.outstanding == 0:
            self._close_later(client)
        logger.info("backend %s removed from the gateway", client.name)

    def _close_later(self, client: BackendClient) -> None:
        try:
            task = asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:
            return  # No event loop has run, so the client never opened a connection.
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _watch(self, client: BackendClient, *, check_first: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self._health_loop(client, check_first), name=f"gateway-health-{client.name}"
        )
        self._watchers[client.name] = task

    async def _health_loop(self, client: BackendClient, check_first: bool) -> None:
        if not check_first:
            await asyncio.sleep(self.health_interval)
        while True:
            await self._check(client)
            await asyncio.sleep(self.health_interval)

    async def _check(self, client: BackendClient) -> None:
        try:
            await client.check_health()
        except Exception:
            # check_health handles the expected failures; anything else is a bug to report
            # without stopping the health checks.
            logger.exception("health check of backend %s raised", client.name)
        # Hand free slots to waiting requests, or fail the ones that no backend can serve.
        self._dispatcher.dispatch()


def default_backends(settings: Settings) -> list[Backend]:
    """Return gateway_backends, or when unset one llmcloud engine at engine_url."""
    if settings.gateway_backends is not None:
        return list(settings.gateway_backends)
    return [
        Backend(
            name="engine",
            kind="ollama",
            base_url=settings.engine_url,
            api_key=settings.engine_token,
            max_parallel=settings.engine_num_parallel,
        )
    ]


def _check_unique_names(configs: list[Backend]) -> None:
    seen: set[str] = set()
    for config in configs:
        if config.name in seen:
            raise InvalidBackends(
                f"backend name {config.name!r} is used twice; give each backend its own name"
            )
        seen.add(config.name)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be more than 0, not {value!r}")


def _describe_down(clients: list[BackendClient]) -> str:
    parts = []
    for client in clients:
        error = client.state.last_error or "not checked yet"
        parts.append(f"backend {client.name} ({error})")
    return ", ".join(parts)
