"""Pending ACME HTTP-01 challenge responses, shared through the data dir.

The ACME client (inside the web app, or `llmcloud certs acme` in another
process) writes each key authorization to `<data_dir>/certs/acme-challenges/`
under its token, and the web app's `/.well-known/acme-challenge/{token}`
route reads it from there. Tokens are base64url text, which the store
checks before touching the file system.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmcloud.tls.certificates import write_public

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class ChallengeStore:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "certs" / "acme-challenges"

    def put(self, token: str, key_authorization: str) -> None:
        write_public(self._path(token), key_authorization.encode("ascii"))

    def get(self, token: str) -> str | None:
        """Return the key authorization for a token, or None for an unknown or invalid token."""
        if not TOKEN_PATTERN.match(token):
            return None
        try:
            return self._path(token).read_text("ascii")
        except OSError:
            return None

    def remove(self, token: str) -> None:
        self._path(token).unlink(missing_ok=True)

    def _path(self, token: str) -> Path:
        if not TOKEN_PATTERN.match(token):
            raise ValueError(f"invalid ACME token {token!r}; expected base64url characters")
        return self.folder / token
