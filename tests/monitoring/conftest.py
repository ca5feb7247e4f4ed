"""Fixtures borrowed from the web and gateway tests: an app on a fake backend, an admin."""

from __future__ import annotations

from tests.gateway.conftest import anyio_backend, fakes  # noqa: F401
from tests.web.conftest import (  # noqa: F401
    admin,
    client,
    fake_backend,
    isolated_settings,
    make_client,
)
