"""The OpenSSH client block that opens a SOCKS tunnel through a jump host (DynamicForward)."""

from __future__ import annotations

import re

DEFAULT_IDENTITY_FILE = "~/.ssh/id_ed25519"
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._@%~/+:\[\]-]+")


class InvalidSshValue(ValueError):
    """A host, user or path that would break or extend the config block."""


def render_ssh_config(
    host: str,
    user: str,
    *,
    local_port: int = 1080,
    identity_file: str = DEFAULT_IDENTITY_FILE,
    alias: str | None = None,
) -> str:
    """Return the `Host` block for ~/.ssh/config, with its usage in comment lines."""
    for label, value in (("host", host), ("user", user), ("identity file", identity_file)):
        if not _SAFE_VALUE.fullmatch(value):
            raise InvalidSshValue(
                f"invalid {label} {value!r}; expected letters, digits and . _ @ % ~ / + : - "
                "without spaces"
            )
    if not 1 <= local_port <= 65535:
        raise InvalidSshValue(f"invalid local port {local_port}; expected 1 to 65535")
    name = alias or f"{host}-socks"
    return (
        f"# SOCKS5 tunnel through {host}.\n"
        f"# Run `ssh -N {name}` and keep that SSH session open while the browser uses\n"
        f"# the proxy at 127.0.0.1:{local_port}; closing it cuts the browser off.\n"
        f"Host {name}\n"
        f"    HostName {host}\n"
        f"    User {user}\n"
        f"    IdentityFile {identity_file}\n"
        "    IdentitiesOnly yes\n"
        f"    DynamicForward 127.0.0.1:{local_port}\n"
        "    ExitOnForwardFailure yes\n"
        "    ServerAliveInterval 30\n"
        "    ServerAliveCountMax 3\n"
    )
