"""Listening sockets for llmcloud's servers, opened before uvicorn starts.

Binding first lets each command report a port in use or a bad address as a
start-up error naming the setting, instead of a traceback from inside uvicorn.
"""

from __future__ import annotations

import errno
import ipaddress
import socket


class ListenError(Exception):
    """The server cannot listen on the configured address."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int, *, setting: str) -> socket.socket:
    """Open a listening TCP socket; `setting` names the port setting for the error message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"port {port} on {host} is already in use; stop the other program or pick "
                f"another port with --port (setting {setting})"
            ) from None
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
