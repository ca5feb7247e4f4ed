"""The audit log and counters: who went where, bytes each way, outcome, never the bytes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.socks.conftest import ADMIN, ALLOWED_HOST, DENIED_HOST, EchoServer
from tests.socks.test_protocol import (
    credentials,
    ipv4_request,
    is_closed,
    log_in,
    open_client,
    receive_exactly,
    reply_code,
    wait_for,
)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def audit_messages() -> Iterator[list[str]]:
    handler = ListHandler()
    logger = logging.getLogger("llmcloud.audit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_tunnel_audited_with_bytes(
    make_proxy: Any, echo_server: EchoServer, audit_messages: list[str]
) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    reply_code(client)
    client.sendall(b"secret payload")
    receive_exactly(client, 14)
    client.shutdown(1)
    assert is_closed(client)
    assert wait_for(lambda: len(audit_messages) == 1)
    line = audit_messages[0]
    assert f"user={ADMIN}" in line
    assert f"destination={ALLOWED_HOST}:{echo_server.port}" in line
    assert "outcome=completed" in line
    assert "bytes_to_destination=14 " in line
    assert "bytes_to_client=14 " in line
    assert "secret payload" not in line


def test_denied_destination_audited(make_proxy: Any, audit_messages: list[str]) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(ipv4_request(DENIED_HOST, 80))
    reply_code(client)
    client.close()
    assert wait_for(lambda: len(audit_messages) == 1)
    assert "outcome=denied" in audit_messages[0]
    assert f"destination={DENIED_HOST}:80" in audit_messages[0]


def test_stats_count_bytes_each_way(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    reply_code(client)
    client.sendall(b"x" * 1000)
    receive_exactly(client, 1000)
    client.close()
    stats = proxy.server.stats
    assert wait_for(lambda: stats.connections["completed"] == 1)
    assert stats.bytes_to_destination == 1000
    assert stats.bytes_to_client == 1000
    assert stats.open_tunnels == 0


def test_control_characters_escaped_in_audit(make_proxy: Any, audit_messages: list[str]) -> None:
    proxy = make_proxy()
    client = open_client(proxy)
    client.sendall(b"\x05\x01\x02" + credentials("eve\nforged line", "wrong password"))
    assert receive_exactly(client, 4) == b"\x05\x02\x01\x01"
    assert wait_for(lambda: len(audit_messages) == 1)
    assert "\n" not in audit_messages[0]
    assert "user=eve\\nforged line" in audit_messages[0]


def test_shutdown_closes_open_tunnels(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00
    proxy.call(proxy.server.close, 0.2)
    assert is_closed(client)
    assert proxy.server.stats.connections["shutdown"] == 1
    assert proxy.server.stats.open_connections == 0


def test_clients_without_login_only_counted(make_proxy: Any, audit_messages: list[str]) -> None:
    proxy = make_proxy(handshake_timeout=0.2)
    # Only "no authentication" offered, a SOCKS4 greeting, and a stalled greeting.
    for greeting, reply in ((b"\x05\x01\x00", b"\x05\xff"), (b"\x04\x01", b""), (b"\x05\x01", b"")):
        client = open_client(proxy)
        client.sendall(greeting)
        assert receive_exactly(client, 2) == reply
        assert is_closed(client)
    stats = proxy.server.stats
    assert wait_for(lambda: sum(stats.connections.values()) == 3)
    assert audit_messages == []
