"""SOCKS5 wire format (RFC 1928) and username/password sub-negotiation (RFC 1929).

Messages are read from a `MessageReader`, which buffers what the client sent
ahead, so that bytes pipelined after a request reach the destination. Every
parse error is a `ProtocolError` that carries the reply to send before the
connection closes, or None where the RFC defines no reply for the case.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

SOCKS_VERSION = 5
AUTH_VERSION = 1
RECEIVE_SIZE = 4096


class Method(IntEnum):
    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE_METHODS = 0xFF


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN_NAME = 0x03
    IPV6 = 0x04


class Reply(IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED_BY_RULESET = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


AUTH_SUCCESS = bytes([AUTH_VERSION, 0x00])
AUTH_FAILURE = bytes([AUTH_VERSION, 0x01])


class ProtocolError(Exception):
    """A message that breaks RFC 1928 or RFC 1929; `reply` is sent before closing, if set."""

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class ClientClosed(Exception):
    """The client closed the connection before a message was complete."""


@dataclass(frozen=True)
class Request:
    command: Command
    host: str
    port: int
    is_domain_name: bool


class MessageReader:
    """Reads whole protocol fields from a non-blocking socket, keeping any extra bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()

    async def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._loop.sock_recv(self._sock, RECEIVE_SIZE)
            if not chunk:
                raise ClientClosed(f"client closed after {len(self._buffer)} of {size} bytes")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def take_buffered(self) -> bytes:
        """Return and forget the bytes received beyond the last complete field."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def encode_reply(reply: Reply, bound: tuple[str, int] | None = None) -> bytes:
    """Encode a reply to a request; `bound` is BND.ADDR and BND.PORT, 0.0.0.0:0 when unset."""
    host, port = bound if bound is not None else ("0.0.0.0", 0)
    address = ipaddress.ip_address(host.split("%", 1)[0])
    address_type = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    header = bytes([SOCKS_VERSION, reply, 0x00, address_type])
    return header + address.packed + struct.pack("!H", port)


def method_selection(method: Method) -> bytes:
    return bytes([SOCKS_VERSION, method])


async def read_greeting(reader: MessageReader) -> set[int]:
    """Read the version identifier/method selection message and return the offered methods."""
    version, method_count = await reader.read_exactly(2)
    if version != SOCKS_VERSION:
        raise ProtocolError(f"greeting has version {version}; expected {SOCKS_VERSION}")
    if method_count == 0:
        raise ProtocolError(
            "greeting offers no methods", method_selection(Method.NO_ACCEPTABLE_METHODS)
        )
    return set(await reader.read_exactly(method_count))


async def read_credentials(reader: MessageReader) -> tuple[str, str]:
    """Read an RFC 1929 username/password request and return the username and password."""
    version, username_length = await reader.read_exactly(2)
    if version != AUTH_VERSION:
        raise ProtocolError(
            f"authentication request has version {version}; expected {AUTH_VERSION}",
            AUTH_FAILURE,
        )
    if username_length == 0:
        raise ProtocolError("authentication request has an empty username", AUTH_FAILURE)
    username = await reader.read_exactly(username_length)
    (password_length,) = await reader.read_exactly(1)
    if password_length == 0:
        raise ProtocolError("authentication request has an empty password", AUTH_FAILURE)
    password = await reader.read_exactly(password_length)
    try:
        return username.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("username or password is not UTF-8", AUTH_FAILURE) from None


async def read_request(reader: MessageReader) -> Request:
    """Read a request (VER CMD RSV ATYP DST.ADDR DST.PORT) and return it."""
    version, command, reserved, address_type = await reader.read_exactly(4)
    if version != SOCKS_VERSION:
        raise ProtocolError(f"request has version {version}; expected {SOCKS_VERSION}")
    if reserved != 0x00:
        raise ProtocolError(
            f"request has reserved byte {reserved:#04x}; expected 0x00",
            encode_reply(Reply.GENERAL_FAILURE),
        )
    if command not in Command.__members__.values():
        raise ProtocolError(
            f"unknown command {command:#04x}", encode_reply(Reply.COMMAND_NOT_SUPPORTED)
        )
    host, is_domain_name = await _read_address(reader, address_type)
    (port,) = struct.unpack("!H", await reader.read_exactly(2))
    return Request(Command(command), host, port, is_domain_name)


async def _read_address(reader: MessageReader, address_type: int) -> tuple[str, bool]:
    if address_type == AddressType.IPV4:
        return str(ipaddress.IPv4Address(await reader.read_exactly(4))), False
    if address_type == AddressType.IPV6:
        return str(ipaddress.IPv6Address(await reader.read_exactly(16))), False
    if address_type == AddressType.DOMAIN_NAME:
        (length,) = await reader.read_exactly(1)
        raw = await reader.read_exactly(length)
        return _decode_domain_name(raw), True
    raise ProtocolError(
        f"unknown address type {address_type:#04x}",
        encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
    )


def _decode_domain_name(raw: bytes) -> str:
    """Return the name if it is printable ASCII without spaces (IDNs arrive punycoded)."""
    invalid = ProtocolError(
        f"invalid domain name {raw[:64]!r}; expected 1 to 255 printable ASCII characters",
        encode_reply(Reply.HOST_UNREACHABLE),
    )
    if not raw or any(byte <= 0x20 or byte >= 0x7F for byte in raw):
        raise invalid
    return raw.decode("ascii").rstrip(".").lower() or "."
