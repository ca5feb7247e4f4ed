"""Fixtures shared by the whole suite: a running engine with the bundled model, and
scratch PostgreSQL databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import hypothesis
import pytest
import uvicorn
from sqlalchemy.engine import make_url

from llmcloud.db.testing import PostgresUnavailable, postgres_server_url, scratch_postgres_database
from llmcloud.engine.app import create_app
from llmcloud.listen import bind_socket
from llmcloud.settings import Settings

BUNDLED_MODEL = "smollm2:135m"

# A loaded machine can take longer than Hypothesis's default 200 ms for one example,
# which would fail a property test that holds.
hypothesis.settings.register_profile("llmcloud", deadline=None)
hypothesis.settings.load_profile("llmcloud")


@contextmanager
def scratch_postgres_or_skip() -> Iterator[str]:
    """Yield the URL of a new PostgreSQL database, dropped afterwards, or skip the test.

    The skip names the server that could not be reached, without its password.
    """
    server = postgres_server_url()
    with ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres_database(server))
        except PostgresUnavailable as exc:
            safe_url = make_url(server).render_as_string(hide_password=True)
            pytest.skip(f"PostgreSQL half skipped: no server reachable at {safe_url}: {exc}")
        yield url


def engine_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test engine: its own data dir, loopback, small limits."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "engine_host": "127.0.0.1",
        "engine_port": 11434,
        "engine_num_ctx": 1024,
        "engine_num_parallel": 2,
        "engine_max_queue": 2,
        "engine_threads": 2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class RunningServer:
    """A uvicorn server on a free loopback port, run in a thread."""

    def __init__(self, app: object) -> None:
        self.sock = bind_socket("127.0.0.1", 0, setting="port")
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def start_engine(data_dir: Path, **overrides: object) -> RunningServer:
    settings = engine_settings(data_dir, **overrides)
    return RunningServer(create_app(settings)).start()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One engine for the session, with the bundled model, at `engine.url`."""
    server = start_engine(tmp_path_factory.mktemp("engine-data"))
    httpx.post(f"{server.url}/api/generate", json={"model": BUNDLED_MODEL}, timeout=60)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def engine_url(engine: RunningServer) -> str:
    return engine.url
