"""Random and hostile handshakes: the proxy replies or closes, and leaks no task or socket."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.socks.conftest import RunningProxy
from tests.socks.test_protocol import ipv4_request, log_in, reply_code

VALID_GREETING = b"\x05\x01\x02"
handshake_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tail: VALID_GREETING + tail, st.binary(max_size=300)),
    st.builds(
        lambda methods, tail: b"\x05" + bytes([len(methods)]) + methods + tail,
        st.binary(max_size=255),
        st.binary(max_size=40),
    ),
)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until_idle(proxy: RunningProxy, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    count = proxy.open_task_count()
    while count > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
        count = proxy.open_task_count()
    return count


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=handshake_bytes)
def test_random_handshake_never_crashes(proxy: RunningProxy, data: bytes) -> None:
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)
    try:
        while client.recv(4096):
            pass
    except ConnectionResetError:
        pass
    client.close()


def test_fuzzing_leaves_no_task_or_socket(make_proxy: Any) -> None:
    proxy = make_proxy(handshake_timeout=0.5)
    baseline_descriptors = open_descriptors()
    test_random_handshake_never_crashes(proxy)
    # The accept loop and the idle sweeper are the only tasks left.
    assert wait_until_idle(proxy) == 2
    assert open_descriptors() <= baseline_descriptors
    assert proxy.server.stats.open_connections == 0


def test_many_half_open_connections_keep_others_served(make_proxy: Any, echo_server: Any) -> None:
    proxy = make_proxy(handshake_timeout=1.0, max_connections=300)
    half_open = [socket.create_connection((proxy.host, proxy.port)) for _ in range(1000)]
    client = log_in(proxy)
    client.sendall(ipv4_request("127.0.0.2", echo_server.port))
    assert reply_code(client) == 0x00
    client.sendall(b"still here")
    assert client.recv(10) == b"still here"
    for sock in half_open:
        sock.close()
    client.close()
    assert wait_until_idle(proxy) == 2
