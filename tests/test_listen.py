from __future__ import annotations

import socket

import pytest

from llmcloud.listen import ListenError, bind_socket


def test_bind_socket_reports_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ListenError, match=f"port {port} on 127.0.0.1 is already in use"
        ) as caught:
            bind_socket("127.0.0.1", port, setting="web_port")
    assert "setting web_port" in str(caught.value)


def test_bind_socket_reports_bad_address() -> None:
    # Binding sends nothing; 192.0.2.1 (TEST-NET-1) is simply not an address of this machine.
    with pytest.raises(ListenError, match=r"cannot listen on 192\.0\.2\.1"):
        bind_socket("192.0.2.1", 0, setting="web_port")


def test_bind_socket_listens() -> None:
    sock = bind_socket("127.0.0.1", 0, setting="web_port")
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()
