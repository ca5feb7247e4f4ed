"""The SOCKS5 proxy server: RFC 1928 CONNECT with RFC 1929 logins and an allow list.

Design, for review:
- Clients must log in with an account whose role is allowed. A client
  that offers only "no authentication" gets method 0xFF and is
  disconnected, unless the proxy listens on a loopback address and
  `allow_no_auth` is set.
- Everything before the request is read runs under the handshake timeout,
  so a client that stalls mid-handshake holds a slot for a bounded time. The
  total connection limit covers handshakes and tunnels alike. Past it, the
  oldest connection still in its handshake is closed to make room, so a
  flood of stalled clients delays others but cannot lock them out; only when
  every connection is a tunnel is the new one closed.
- Names are resolved here and every resolved address goes through the allow
  list (see `llmcloud.socks.acl`), so the client's DNS never sees them.
- BIND and UDP ASSOCIATE get reply 07 (command not supported).
- The audit log and the counters record who went where, the bytes each way,
  the duration and the outcome, never the bytes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from llmcloud.socks import protocol
from llmcloud.socks.acl import AllowList
from llmcloud.socks.auth import Authenticator, FailureLimiter
from llmcloud.socks.protocol import Command, MessageReader, Method, ProtocolError, Reply
from llmcloud.socks.stats import SocksStats, TunnelRecord
from llmcloud.socks.tunnel import Resolver, connect_destination, relay, resolve_name

log = logging.getLogger("llmcloud.socks")
ANONYMOUS = "-"
ACCEPT_BACKLOG = 1024


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 1080
    allow_list: AllowList = field(default_factory=lambda: AllowList(()))
    allow_no_auth: bool = False
    max_connections: int = 2000
    max_tunnels_per_user: int = 1000
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float = 600.0
    max_login_failures: int = 5
    login_failure_window: float = 60.0

    @property
    def listens_on_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class SocksServer:
    """One listening socket and the tasks of its connections."""

    def __init__(
        self,
        config: ProxyConfig,
        authenticator: Authenticator | None,
        resolver: Resolver = resolve_name,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self.stats = SocksStats()
        self._authenticator = authenticator
        self._limiter = FailureLimiter(config.max_login_failures, config.login_failure_window)
        self._listener: socket.socket | None = None
        self._background: list[asyncio.Task[None]] = []
        self._connections: dict[asyncio.Task[None], TunnelRecord] = {}
        self._tunnels: set[asyncio.Task[None]] = set()
        # Connections still in their handshake, oldest first: the ones evicted under a flood.
        self._handshakes: dict[asyncio.Task[None], None] = {}
        self._tunnels_per_user: Counter[str] = Counter()
        self._rejected_since_warning = 0

    @property
    def no_auth_allowed(self) -> bool:
        return self.config.allow_no_auth and self.config.listens_on_loopback

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("the SOCKS proxy is not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Bind the listening socket and start accepting connections."""
        if self.config.allow_no_auth and not self.config.listens_on_loopback:
            log.warning(
                "socks_allow_no_auth ignored: the proxy listens on %s, not on a loopback "
                "address, so every client must log in",
                self.config.host,
            )
        if self._authenticator is None and not self.no_auth_allowed:
            log.warning("no authenticator configured: every SOCKS login will fail")
        self._listener = _listen(self.config.host, self.config.port)
        self._background = [
            asyncio.create_task(self._accept_loop(), name="socks-accept"),
            asyncio.create_task(self._idle_sweeper(), name="socks-idle-sweeper"),
        ]
        host, port = self.address
        log.info("SOCKS proxy listening on %s:%s", host, port)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, end handshakes now and give open tunnels `grace` seconds to finish."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task, record in list(self._connections.items()):
            if task not in self._tunnels:
                record.outcome = "shutdown"
                task.cancel()
        if self._tunnels:
            await asyncio.wait(set(self._tunnels), timeout=grace)
        for task, record in list(self._connections.items()):
            record.outcome = "shutdown"
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        log.info("SOCKS proxy stopped")

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(self._listener)
            except OSError as exc:
                # Out of file descriptors, typically: wait instead of spinning.
                log.warning("accepting a SOCKS connection failed: %s; retrying in 0.1s", exc)
                await asyncio.sleep(0.1)
                continue
            full = self.stats.open_connections >= self.config.max_connections
            if full and not self._evict_oldest_handshake():
                self._reject_over_limit(client)
                continue
            record = TunnelRecord(client=str(peer[0]))
            task = asyncio.create_task(self._serve(client, record))
            self._connections[task] = record
            self._handshakes[task] = None
            self.stats.open_connections += 1
            task.add_done_callback(self._forget)

    def _evict_oldest_handshake(self) -> bool:
        """Close the longest-waiting handshake, so that a flood of stalled clients cannot
        lock out the rest; return False when every connection is a tunnel."""
        for task in self._handshakes:
            del self._handshakes[task]
            self._connections[task].outcome = "evicted_in_handshake"
            task.cancel()
            self._warn_over_limit("closed the oldest connection still in its handshake")
            return True
        return False

    def _reject_over_limit(self, client: socket.socket) -> None:
        client.close()
        self.stats.connections["over_connection_limit"] += 1
        self._warn_over_limit("closed the new connection because all are tunnels")

    def _warn_over_limit(self, action: str) -> None:
        # Logged for the first of every 1000 cases, because a flood would fill the log.
        if self._rejected_since_warning == 0:
            log.warning(
                "%d SOCKS connections open, which reaches socks_max_connections; %s",
                self.stats.open_connections,
                action,
            )
        self._rejected_since_warning = (self._rejected_since_warning + 1) % 1000

    def _forget(self, task: asyncio.Task[None]) -> None:
        record = self._connections.pop(task)
        self._tunnels.discard(task)
        self._handshakes.pop(task, None)
        self.stats.open_connections -= 1
        record.finish(self.stats)

    async def _idle_sweeper(self) -> None:
        interval = min(1.0, self.config.idle_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            oldest_allowed = time.monotonic() - self.config.idle_timeout
            for task in list(self._tunnels):
                record = self._connections.get(task)
                if record is not None and record.last_activity < oldest_allowed:
                    record.outcome = "idle_timeout"
                    task.cancel()

    async def _serve(self, client: socket.socket, record: TunnelRecord) -> None:
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._handle(client, record)
        except ProtocolError as exc:
            record.outcome = "protocol_error"
            log.debug("SOCKS client %s sent an invalid message: %s", record.client, exc)
            if exc.reply is not None:
                await _send_quietly(client, exc.reply)
        except protocol.ClientClosed:
            pass
        except TimeoutError:
            record.outcome = "handshake_timeout"
        except OSError as exc:
            record.outcome = "connection_error"
            log.debug("SOCKS client %s: %s", record.client, exc)
        except Exception:
            record.outcome = "internal_error"
            log.exception("SOCKS connection from %s failed", record.client)
            await _send_quietly(client, protocol.encode_reply(Reply.GENERAL_FAILURE))
        finally:
            client.close()

    async def _handle(self, client: socket.socket, record: TunnelRecord) -> None:
        reader = MessageReader(client)
        async with asyncio.timeout(self.config.handshake_timeout):
            user = await self._log_in(client, reader, record)
            if user is None:
                return
            record.user = user
            request = await protocol.read_request(reader)
        record.destination = _format_destination(request.host, request.port)
        if request.command != Command.CONNECT:
            record.outcome = "command_not_supported"
            await _send(client, protocol.encode_reply(Reply.COMMAND_NOT_SUPPORTED))
            return
        if self._tunnels_per_user[user] >= self.config.max_tunnels_per_user:
            record.outcome = "over_user_limit"
            await _send(client, protocol.encode_reply(Reply.GENERAL_FAILURE))
            return

        # Counted from the request on, so that simultaneous requests cannot pass the limit.
        self._tunnels_per_user[user] += 1
        try:
            await self._connect_and_relay(client, reader, record, request)
        finally:
            self._tunnels_per_user[user] -= 1
            if self._tunnels_per_user[user] <= 0:
                del self._tunnels_per_user[user]

    async def _log_in(
        self, client: socket.socket, reader: MessageReader, record: TunnelRecord
    ) -> str | None:
        """Negotiate the method and check the login; return the user, or None after a refusal."""
        methods = await protocol.read_greeting(reader)
        if Method.USERNAME_PASSWORD in methods:
            await _send(client, protocol.method_selection(Method.USERNAME_PASSWORD))
        elif Method.NO_AUTHENTICATION in methods and self.no_auth_allowed:
            await _send(client, protocol.method_selection(Method.NO_AUTHENTICATION))
            return ANONYMOUS
        else:
            record.outcome = "no_acceptable_method"
            await _send(client, protocol.method_selection(Method.NO_ACCEPTABLE_METHODS))
            return None

        username, password = await protocol.read_credentials(reader)
        # The audit line names the user as sent, so control characters must not reach the log.
        record.user = username[:64].encode("unicode_escape").decode("ascii")
        if self._limiter.is_blocked(record.client):
            record.outcome = "login_rate_limited"
            await _send(client, protocol.AUTH_FAILURE)
            return None
        user = await self._authenticator(username, password) if self._authenticator else None
        if user is None:
            self._limiter.record_failure(record.client)
            record.outcome = "login_failed"
            await _send(client, protocol.AUTH_FAILURE)
            return None
        self._limiter.record_success(record.client)
        await _send(client, protocol.AUTH_SUCCESS)
        return user

    async def _connect_and_relay(
        self,
        client: socket.socket,
        reader: MessageReader,
        record: TunnelRecord,
        request: protocol.Request,
    ) -> None:
        result = await connect_destination(request, self.config, self._resolver)
        if result.target is None:
            record.outcome = result.outcome
            await _send(client, protocol.encode_reply(result.reply))
            return

        target = result.target
        task = asyncio.current_task()
        assert task is not None
        self._handshakes.pop(task, None)
        self._tunnels.add(task)
        self.stats.open_tunnels += 1
        try:
            bound = target.getsockname()[:2]
            await _send(client, protocol.encode_reply(Reply.SUCCEEDED, bound))
            record.outcome = "completed"
            record.last_activity = time.monotonic()
            await relay(client, target, reader.take_buffered(), record)
        finally:
            target.close()
            self.stats.open_tunnels -= 1


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(ACCEPT_BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _format_destination(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        await _send(sock, data)
