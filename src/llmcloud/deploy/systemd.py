"""systemd service units for each part of llmcloud: engine, web, socks and up.

`render_units()` returns the text of each unit; `write_units()` writes them
to a folder, from which an operator copies them to /etc/systemd/system. Every
unit runs as a dedicated system user, reads its settings from one
environment file, keeps the data dir as the only writable path
(ProtectSystem=strict), cannot gain privileges (NoNewPrivileges), and is
restarted when it fails. `llmcloud-web@.service` is a template for several
web instances on one machine: the instance name is the TCP port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "llmcloud"
DEFAULT_EXECUTABLE = Path("/opt/llmcloud/.venv/bin/llmcloud")
DEFAULT_ENV_FILE = Path("/etc/llmcloud/llmcloud.env")
DEFAULT_DATA_DIR = Path("/var/lib/llmcloud")

_USER_SHAPE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class UnitOptionError(ValueError):
    """An option of the units is invalid, such as a relative path or a bad user name."""


@dataclass(frozen=True)
class UnitOptions:
    """User and paths of the machine that the units run on."""

    user: str = DEFAULT_USER
    executable: Path = DEFAULT_EXECUTABLE
    env_file: Path = DEFAULT_ENV_FILE
    data_dir: Path = DEFAULT_DATA_DIR

    def __post_init__(self) -> None:
        if not _USER_SHAPE.fullmatch(self.user):
            raise UnitOptionError(
                f"invalid user name {self.user!r}; expected a system user name such as "
                "'llmcloud' (lower-case letters, digits, _ and -, at most 32)"
            )
        for label, path in (
            ("executable", self.executable),
            ("environment file", self.env_file),
            ("data dir", self.data_dir),
        ):
            if not path.is_absolute() or any(char.isspace() for char in str(path)):
                raise UnitOptionError(
                    f"invalid {label} path {str(path)!r}; expected an absolute path without "
                    "spaces, such as /opt/llmcloud/.venv/bin/llmcloud"
                )


@dataclass(frozen=True)
class _Part:
    unit: str
    description: str
    arguments: str
    after: str
    # The engine needs /dev/nvidia* for a GPU, so only the other parts get PrivateDevices.
    private_devices: bool = True


_PARTS = (
    _Part(
        unit="llmcloud-engine.service",
        description="llmcloud model engine (Ollama- and OpenAI-compatible API)",
        arguments="engine",
        after="network-online.target",
        private_devices=False,
    ),
    _Part(
        unit="llmcloud-web.service",
        description="llmcloud chat web app",
        arguments="web",
        after="network-online.target postgresql.service redis-server.service",
    ),
    _Part(
        unit="llmcloud-web@.service",
        description="llmcloud chat web app on port %i",
        arguments="web --port %i",
        after="network-online.target postgresql.service redis-server.service",
    ),
    _Part(
        unit="llmcloud-socks.service",
        description="llmcloud SOCKS5 proxy for admins",
        arguments="socks",
        after="network-online.target",
    ),
    _Part(
        unit="llmcloud-up.service",
        description="llmcloud on one machine (engine, web app and SOCKS proxy)",
        arguments="up",
        after="network-online.target",
        private_devices=False,
    ),
)


def unit_names() -> list[str]:
    return [part.unit for part in _PARTS]


def render_units(options: UnitOptions) -> dict[str, str]:
    """Return the text of every unit, keyed by its file name."""
    return {part.unit: _render(part, options) for part in _PARTS}


def write_units(options: UnitOptions, directory: Path) -> list[Path]:
    """Write every unit into `directory` (created when missing) and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_units(options).items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def _render(part: _Part, options: UnitOptions) -> str:
    lines = [
        "[Unit]",
        f"Description={part.description}",
        f"After={part.after}",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"User={options.user}",
        f"Group={options.user}",
        f"EnvironmentFile={options.env_file}",
        f"Environment=LLMCLOUD_DATA_DIR={options.data_dir}",
        f"ExecStart={options.executable} {part.arguments}",
        "Restart=on-failure",
        "RestartSec=5s",
        # The web app gives open requests 10 s to finish after SIGTERM (uvicorn graceful shutdown).
        "TimeoutStopSec=30s",
        "",
        "# Hardening: only the data dir is writable; no privileges can be gained.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={options.data_dir}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        f"PrivateDevices={'yes' if part.private_devices else 'no'}",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
