"""Byte-level RFC 1928 and RFC 1929 exchanges with the proxy, one per reply code."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmcloud.socks import tunnel
from llmcloud.socks.acl import AllowList
from tests.socks.conftest import (
    ADMIN,
    ALLOWED_HOST,
    DENIED_HOST,
    PASSWORD,
    PLAIN_USER,
    EchoServer,
    RunningProxy,
)

NO_AUTH = b"\x05\x01\x00"
USER_PASS = b"\x05\x01\x02"


def open_client(proxy: RunningProxy) -> socket.socket:
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    return client


def receive_exactly(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def is_closed(client: socket.socket) -> bool:
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def credentials(username: str, password: str) -> bytes:
    user, secret = username.encode(), password.encode()
    return bytes([1, len(user)]) + user + bytes([len(secret)]) + secret


def log_in(proxy: RunningProxy, username: str = ADMIN, password: str = PASSWORD) -> socket.socket:
    client = open_client(proxy)
    client.sendall(USER_PASS)
    assert receive_exactly(client, 2) == b"\x05\x02"
    client.sendall(credentials(username, password))
    assert receive_exactly(client, 2) == b"\x01\x00"
    return client


def ipv4_request(host: str, port: int, command: int = 1) -> bytes:
    return bytes([5, command, 0, 1]) + socket.inet_aton(host) + struct.pack("!H", port)


def domain_request(name: str, port: int) -> bytes:
    encoded = name.encode()
    return bytes([5, 1, 0, 3, len(encoded)]) + encoded + struct.pack("!H", port)


def reply_code(client: socket.socket) -> int:
    header = receive_exactly(client, 4)
    assert len(header) == 4, f"connection closed after {header!r}"
    address_length = {1: 4, 4: 16}[header[3]]
    receive_exactly(client, address_length + 2)
    return header[1]


def test_greeting_selects_username_password(proxy: RunningProxy) -> None:
    client = open_client(proxy)
    client.sendall(b"\x05\x02\x00\x02")
    assert receive_exactly(client, 2) == b"\x05\x02"


def test_no_auth_only_gets_no_acceptable_methods(proxy: RunningProxy) -> None:
    client = open_client(proxy)
    client.sendall(NO_AUTH)
    assert receive_exactly(client, 2) == b"\x05\xff"
    assert is_closed(client)


def test_no_auth_allowed_on_loopback_when_set(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy(allow_no_auth=True)
    client = open_client(proxy)
    client.sendall(NO_AUTH)
    assert receive_exactly(client, 2) == b"\x05\x00"
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00


def test_no_auth_setting_ignored_off_loopback(make_proxy: Any) -> None:
    proxy = make_proxy(allow_no_auth=True, host="0.0.0.0")
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    client.sendall(NO_AUTH)
    assert receive_exactly(client, 2) == b"\x05\xff"


def test_empty_method_list_gets_no_acceptable_methods(proxy: RunningProxy) -> None:
    client = open_client(proxy)
    client.sendall(b"\x05\x00")
    assert receive_exactly(client, 2) == b"\x05\xff"
    assert is_closed(client)


@pytest.mark.parametrize("greeting", [b"\x04\x01\x00", b"\x00\x01\x02", b"GET / HTTP/1.1\r\n"])
def test_wrong_version_greeting_closes(proxy: RunningProxy, greeting: bytes) -> None:
    client = open_client(proxy)
    client.sendall(greeting)
    assert is_closed(client)


def test_login_with_admin_succeeds(proxy: RunningProxy) -> None:
    log_in(proxy)


@pytest.mark.parametrize(
    ("username", "password"),
    [(ADMIN, "wrong password"), ("nobody", PASSWORD), (PLAIN_USER, PASSWORD)],
)
def test_login_failure_gets_status_and_close(
    proxy: RunningProxy, username: str, password: str
) -> None:
    client = open_client(proxy)
    client.sendall(USER_PASS + credentials(username, password))
    assert receive_exactly(client, 4) == b"\x05\x02\x01\x01"
    assert is_closed(client)


def test_login_with_overlong_username_fails(proxy: RunningProxy) -> None:
    client = open_client(proxy)
    client.sendall(USER_PASS + credentials("u" * 255, PASSWORD))
    assert receive_exactly(client, 4) == b"\x05\x02\x01\x01"


@pytest.mark.parametrize(
    "message",
    [b"\x05\x05alice\x08password", b"\x01\x00\x08password", b"\x01\x05alice\x00"],
)
def test_malformed_login_gets_failure(proxy: RunningProxy, message: bytes) -> None:
    client = open_client(proxy)
    client.sendall(USER_PASS + message)
    assert receive_exactly(client, 4) == b"\x05\x02\x01\x01"
    assert is_closed(client)


def test_failed_logins_are_rate_limited(make_proxy: Any) -> None:
    proxy = make_proxy(max_login_failures=2, login_failure_window=60.0)
    for _ in range(2):
        client = open_client(proxy)
        client.sendall(USER_PASS + credentials(ADMIN, "wrong password"))
        receive_exactly(client, 4)
    client = open_client(proxy)
    client.sendall(USER_PASS + credentials(ADMIN, PASSWORD))
    assert receive_exactly(client, 4) == b"\x05\x02\x01\x01"
    assert wait_for(lambda: proxy.server.stats.connections["login_rate_limited"] == 1)


def test_connect_to_allowed_ipv4_relays(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    header = receive_exactly(client, 10)
    assert header[:4] == b"\x05\x00\x00\x01"
    # BND.ADDR is the proxy's own end of the connection to the destination.
    assert socket.inet_ntoa(header[4:8]).startswith("127.")
    client.sendall(b"ping")
    assert receive_exactly(client, 4) == b"ping"


def test_name_resolving_outside_list_denied(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    client.sendall(domain_request("localhost", echo_server.port))
    # localhost resolves to 127.0.0.1, which is not on the list; the name matches no pattern.
    assert reply_code(client) == 0x02


def test_connect_by_allowed_name(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(domain_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00


def test_pipelined_bytes_reach_destination(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port) + b"early")
    assert reply_code(client) == 0x00
    assert receive_exactly(client, 5) == b"early"


def test_connect_to_ipv6_loopback_denied(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    address = socket.inet_pton(socket.AF_INET6, "::1")
    client.sendall(b"\x05\x01\x00\x04" + address + struct.pack("!H", echo_server.port))
    assert reply_code(client) == 0x02


def test_connect_to_ipv6_allowed(make_proxy: Any) -> None:
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    proxy = make_proxy(allow_list=AllowList.parse(["::1"]))
    client = log_in(proxy)
    address = socket.inet_pton(socket.AF_INET6, "::1")
    client.sendall(b"\x05\x01\x00\x04" + address + struct.pack("!H", listener.getsockname()[1]))
    header = receive_exactly(client, 4)
    assert header == b"\x05\x00\x00\x04"
    listener.close()


def test_denied_destination_gets_02(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(DENIED_HOST, echo_server.port))
    assert reply_code(client) == 0x02
    assert is_closed(client)


def test_denied_counted_in_stats(proxy: RunningProxy) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(DENIED_HOST, 80))
    reply_code(client)
    client.close()
    assert wait_for(lambda: proxy.server.stats.denied_destinations == 1)


def test_closed_port_gets_05(proxy: RunningProxy) -> None:
    unused = socket.create_server((ALLOWED_HOST, 0))
    port = unused.getsockname()[1]
    unused.close()
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, port))
    assert reply_code(client) == 0x05


def test_unknown_name_gets_04(make_proxy: Any) -> None:
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(domain_request("no-such-host.invalid", 80))
    assert reply_code(client) == 0x04


def test_invalid_name_gets_04(proxy: RunningProxy) -> None:
    client = log_in(proxy)
    client.sendall(b"\x05\x01\x00\x03\x03a b\x00\x50")
    assert reply_code(client) == 0x04


@pytest.mark.parametrize("command", [0x02, 0x03])
def test_bind_and_udp_associate_get_07(proxy: RunningProxy, command: int) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, 80, command=command))
    assert reply_code(client) == 0x07


def test_unknown_command_gets_07(proxy: RunningProxy) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, 80, command=0x09))
    assert reply_code(client) == 0x07


def test_unknown_address_type_gets_08(proxy: RunningProxy) -> None:
    client = log_in(proxy)
    client.sendall(b"\x05\x01\x00\x05" + b"\x00" * 6)
    assert reply_code(client) == 0x08


def test_nonzero_reserved_byte_gets_01(proxy: RunningProxy) -> None:
    client = log_in(proxy)
    client.sendall(b"\x05\x01\x07\x01" + socket.inet_aton(ALLOWED_HOST) + b"\x00\x50")
    assert reply_code(client) == 0x01


def test_user_tunnel_limit_gets_01(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy(max_tunnels_per_user=1)
    first = log_in(proxy)
    first.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(first) == 0x00
    second = log_in(proxy)
    second.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(second) == 0x01


def test_stalled_handshake_times_out(make_proxy: Any) -> None:
    proxy = make_proxy(handshake_timeout=0.3)
    client = open_client(proxy)
    client.sendall(b"\x05\x02")
    started = time.monotonic()
    assert is_closed(client)
    assert time.monotonic() - started < 3


def test_idle_tunnel_is_closed(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy(idle_timeout=0.3)
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00
    assert is_closed(client)


def test_half_close_passes_through(proxy: RunningProxy, echo_server: EchoServer) -> None:
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    assert receive_exactly(client, 10) == b"last words"
    assert is_closed(client)


def test_connection_limit_keeps_serving_after(make_proxy: Any, echo_server: EchoServer) -> None:
    proxy = make_proxy(max_connections=5, handshake_timeout=0.5)
    stalled = [open_client(proxy) for _ in range(20)]
    assert sum(is_closed(client) for client in stalled) == 20
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, echo_server.port))
    assert reply_code(client) == 0x00


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.ENETUNREACH, "Network is unreachable"), 0x03),
        (OSError(errno.EHOSTUNREACH, "No route to host"), 0x04),
        (OSError(errno.EACCES, "Permission denied"), 0x01),
    ],
)
def test_connect_errors_map_to_replies(
    make_proxy: Any, monkeypatch: pytest.MonkeyPatch, error: OSError, code: int
) -> None:
    # Loopback cannot produce these errors, so the connect step raises them directly.
    async def failing_connect(address: object, port: int) -> socket.socket:
        raise error

    monkeypatch.setattr(tunnel, "_connect", failing_connect)
    proxy = make_proxy()
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, 80))
    assert reply_code(client) == code


def test_connect_timeout_gets_04(make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def stalled_connect(address: object, port: int) -> socket.socket:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    monkeypatch.setattr(tunnel, "_connect", stalled_connect)
    proxy = make_proxy(connect_timeout=0.2)
    client = log_in(proxy)
    client.sendall(ipv4_request(ALLOWED_HOST, 80))
    assert reply_code(client) == 0x04


def test_user_limit_counts_pending_connects(
    make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow_connect(address: object, port: int) -> socket.socket:
        await asyncio.sleep(0.5)
        raise OSError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(tunnel, "_connect", slow_connect)
    proxy = make_proxy(max_tunnels_per_user=1)
    first, second = log_in(proxy), log_in(proxy)
    first.sendall(ipv4_request(ALLOWED_HOST, 80))
    time.sleep(0.1)
    second.sendall(ipv4_request(ALLOWED_HOST, 80))
    assert reply_code(second) == 0x01
    assert reply_code(first) == 0x05
