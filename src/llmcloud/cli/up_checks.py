"""Checks that `llmcloud up` runs around its children: free ports before, readiness after.

The ports are checked before any child starts, so that a port in use fails at
once with the setting to change. Otherwise a readiness probe could reach the
other program on that port and count the part as started.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Protocol

import httpx

from llmcloud.socks.protocol import SOCKS_VERSION, Method

PROBE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Listener:
    """An address that a part listens on, and what the operator changes when it is taken."""

    host: str
    port: int
    remedy: str

    def in_use_message(self, part_name: str) -> str | None:
        """Return why the part cannot listen here, or None when the port is free."""
        if not _is_port_in_use(self.host, self.port):
            return None
        return (
            f"port {self.port} on {self.host} is already in use, so the {part_name} cannot "
            f"start; stop the program that listens there, or {self.remedy}"
        )


class ReadinessProbe(Protocol):
    """A check that a started part serves requests."""

    @property
    def target(self) -> str:
        """The address probed, for messages."""
        ...

    def passes(self) -> bool: ...


@dataclass(frozen=True)
class HealthEndpoint:
    """Readiness of an HTTP server: its /healthz returns 200."""

    url: str

    @property
    def target(self) -> str:
        return self.url

    def passes(self) -> bool:
        # The probe reaches a child on loopback, whose certificate may name a public host.
        try:
            response = httpx.get(self.url, timeout=PROBE_TIMEOUT_SECONDS, verify=False)  # noqa: S501
        except httpx.HTTPError:
            return False
        return response.status_code == 200


@dataclass(frozen=True)
class SocksGreeting:
    """Readiness of a SOCKS5 proxy: it selects username/password for a greeting offering it."""

    host: str
    port: int

    @property
    def target(self) -> str:
        return f"socks5://{self.host}:{self.port}"

    def passes(self) -> bool:
        greeting = bytes([SOCKS_VERSION, 1, Method.USERNAME_PASSWORD])
        expected = bytes([SOCKS_VERSION, Method.USERNAME_PASSWORD])
        address = (self.host.strip("[]"), self.port)
        try:
            with socket.create_connection(address, timeout=PROBE_TIMEOUT_SECONDS) as sock:
                sock.sendall(greeting)
                return _receive_exactly(sock, len(expected)) == expected
        except OSError:
            return False


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _is_port_in_use(host: str, port: int) -> bool:
    """Return whether another socket listens on host:port.

    SO_REUSEADDR matches the servers' own sockets, so a port held only by
    connections in TIME_WAIT counts as free. Other bind errors, such as an
    address that is not on this machine, are left for the part to report.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
