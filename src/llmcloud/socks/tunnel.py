"""Resolving and connecting to a destination, and relaying bytes both ways."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmcloud.socks.acl import IPAddress
from llmcloud.socks.protocol import Reply, Request
from llmcloud.socks.stats import TunnelRecord

if TYPE_CHECKING:
    from llmcloud.socks.server import ProxyConfig

log = logging.getLogger("llmcloud.socks")
# 64 KiB reads stay below glibc's mmap threshold, so each read is a cheap allocation,
# and an idle tunnel keeps no buffer.
CHUNK_SIZE = 64 * 1024
# Turns a host name and port into addresses; raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_ERRNO_REPLIES = {
    errno.ECONNREFUSED: (Reply.CONNECTION_REFUSED, "connection_refused"),
    errno.ENETUNREACH: (Reply.NETWORK_UNREACHABLE, "network_unreachable"),
    errno.EHOSTUNREACH: (Reply.HOST_UNREACHABLE, "host_unreachable"),
    errno.ETIMEDOUT: (Reply.HOST_UNREACHABLE, "connect_timeout"),
}


@dataclass
class ConnectResult:
    """A connected socket, or the reply and audit outcome of the failure."""

    target: socket.socket | None
    reply: Reply = Reply.SUCCEEDED
    outcome: str = "completed"


async def connect_destination(
    request: Request, config: ProxyConfig, resolver: Resolver
) -> ConnectResult:
    """Resolve the destination, check each address against the allow list, and connect."""
    try:
        if request.is_domain_name:
            addresses = await resolver(request.host, request.port)
        else:
            addresses = [ipaddress.ip_address(request.host)]
    except OSError as exc:
        log.debug("resolving %s failed: %s", request.host, exc)
        return ConnectResult(None, Reply.HOST_UNREACHABLE, "name_not_resolved")

    name = request.host if request.is_domain_name else None
    allowed = [
        address for address in addresses if config.allow_list.allows(address, request.port, name)
    ]
    if not allowed:
        log.info("SOCKS destination denied by the allow list: %s:%s", request.host, request.port)
        return ConnectResult(None, Reply.NOT_ALLOWED_BY_RULESET, "denied")

    failure = ConnectResult(None, Reply.HOST_UNREACHABLE, "host_unreachable")
    for address in allowed:
        try:
            async with asyncio.timeout(config.connect_timeout):
                return ConnectResult(await _connect(address, request.port))
        except TimeoutError:
            failure = ConnectResult(None, Reply.HOST_UNREACHABLE, "connect_timeout")
        except OSError as exc:
            reply, outcome = _ERRNO_REPLIES.get(
                exc.errno or 0, (Reply.GENERAL_FAILURE, "connect_failed")
            )
            failure = ConnectResult(None, reply, outcome)
            log.debug("connecting to %s port %s failed: %s", address, request.port, exc)
    return failure


async def resolve_name(name: str, port: int) -> list[IPAddress]:
    """Resolve a host name through the system resolver, in getaddrinfo's order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def _connect(address: IPAddress, port: int) -> socket.socket:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def relay(
    client: socket.socket, target: socket.socket, pending: bytes, record: TunnelRecord
) -> None:
    """Copy bytes both ways until both sides have closed, or either fails.

    `pending` contains the bytes the client sent right after its request, and
    they go first. When one side closes its sending half, the other side's
    sending half is shut down too (half-close), and the other direction keeps
    going.
    """
    loop = asyncio.get_running_loop()
    if pending:
        await loop.sock_sendall(target, pending)
        record.bytes_to_destination += len(pending)
    upstream = asyncio.create_task(_pump(client, target, record, to_destination=True))
    downstream = asyncio.create_task(_pump(target, client, record, to_destination=False))
    try:
        done, _ = await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                record.outcome = "connection_error"
                log.debug("SOCKS tunnel of %s to %s: %s", record.client, record.destination, error)
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)


async def _pump(
    source: socket.socket, sink: socket.socket, record: TunnelRecord, *, to_destination: bool
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(source, CHUNK_SIZE)
        if not data:
            break
        await loop.sock_sendall(sink, data)
        if to_destination:
            record.bytes_to_destination += len(data)
        else:
            record.bytes_to_client += len(data)
        record.last_activity = time.monotonic()
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
