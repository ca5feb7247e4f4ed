"""Start the real OpenID Connect provider (npm package oidc-provider) on loopback for tests.

`npm ci` installs the locked package into tests/oidc/node_modules on first
use. The provider's accounts and clients come from a JSON config file.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

OIDC_DIR = Path(__file__).parent
SCRIPT = OIDC_DIR / "provider.mjs"
START_SECONDS = 30


def ensure_installed() -> None:
    """Run `npm ci` unless oidc-provider is installed already."""
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; the OIDC tests need node and npm")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, check=True, capture_output=True
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OidcProviderProcess:
    """A running oidc-provider; `issuer` is its URL."""

    def __init__(
        self,
        config_dir: Path,
        clients: list[dict[str, Any]],
        accounts: dict[str, Any],
        *,
        claims_in_userinfo_only: bool = False,
        faults: dict[str, Any] | None = None,
    ):
        """`faults` are the fault options of provider.mjs, such as {"idTokenTtlSeconds": 60}."""
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.config_file = config_dir / "oidc-provider.json"
        config = {
            "port": self.port,
            "clients": clients,
            "accounts": copy.deepcopy(accounts),
            "claimsInUserinfoOnly": claims_in_userinfo_only,
            **(faults or {}),
        }
        self.config_file.write_text(json.dumps(config))
        self.config = config
        self.log_file = config_dir / "oidc-provider.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OidcProviderProcess:
        ensure_installed()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; the OIDC tests need it")
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [node, str(SCRIPT), str(self.config_file)],
                cwd=OIDC_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()
        return self

    def set_claims(self, login: str, **claims: Any) -> None:
        """Change claims of an account at the provider; its next log-in carries them.

        A claim set to None is removed.
        """
        stored = self.config["accounts"][login]["claims"]
        stored.update(claims)
        for name in [name for name, value in claims.items() if value is None]:
            del stored[name]
        written = self.config_file.with_suffix(".tmp")
        written.write_text(json.dumps(self.config))
        written.replace(self.config_file)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        url = f"{self.issuer}/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log_file.read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"oidc-provider did not start within {START_SECONDS} s")
