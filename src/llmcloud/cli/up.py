"""`llmcloud up`: run the engine, the web app and the SOCKS proxy together on one machine.

A small supervisor starts `llmcloud engine`, `llmcloud web` and, unless
socks_in_up is false, `llmcloud socks serve` as child processes with the
same settings, the web app's gateway pointing at the local engine. Before
starting any, it checks that their ports are free. It waits for each one to
pass its readiness probe (/healthz, or a SOCKS5 greeting) before starting
the next, so the proxy starts after the web app has migrated the database
whose accounts it checks. Then it prints the addresses, and on SIGINT or SIGTERM stops the
children in reverse order: SIGTERM, then SIGKILL for a child still running
after the stop timeout.

A child that exits on its own once everything is up is started again, as
systemd's Restart=on-failure would, after a delay that doubles with each
restart in a row (1 s, 2 s, 4 s, up to 30 s) while the other parts keep
serving. A part that exits RESTART_LIMIT times within RESTART_WINDOW_SECONDS,
or dies before it is up, stops everything, and `up` exits with status 1,
naming the part. The children run in their own process group, so a Ctrl-C in
the terminal reaches only the supervisor, which then stops them in order.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import typer
from sqlalchemy.exc import SQLAlchemyError

from llmcloud.auth.account_stats import count_accounts
from llmcloud.cli.common import fail, settings_or_exit
from llmcloud.cli.up_checks import HealthEndpoint, Listener, ReadinessProbe, SocksGreeting
from llmcloud.db import database_url_from_settings, open_database
from llmcloud.settings import ConfigError, Settings
from llmcloud.tls.errors import TLSError
from llmcloud.tls.serving import localhost_certificate

log = logging.getLogger("llmcloud.cli")

STARTUP_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 300.0
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
LOCK_FILE = "up.lock"


def register(app: typer.Typer) -> None:
    app.command("up")(up)


def up(
    port: int | None = typer.Option(
        None, min=1, max=65535, help="TCP port of the web app (setting web_port)."
    ),
    engine_port: int | None = typer.Option(
        None, min=1, max=65535, help="TCP port of the engine (setting engine_port)."
    ),
) -> None:
    """Start the engine, the web app and the SOCKS proxy; Ctrl-C stops them all."""
    settings = settings_or_exit(web_port=port, engine_port=engine_port)
    lock = lock_data_dir(settings.data_dir)
    try:
        parts = parts_for(settings)
    except TLSError as exc:
        fail(exc.message, code=2)
    for part in parts:
        for listener in part.listeners:
            if message := listener.in_use_message(part.name):
                fail(message, code=2)
    supervisor = Supervisor(parts)
    with lock:
        code = supervisor.run(on_ready=lambda: print_welcome(settings))
    if supervisor.failure:
        fail(supervisor.failure, code=code)
    raise typer.Exit(code)


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Lock the data dir for this `up`, or exit naming the problem.

    Two `up` commands on one data dir would share its database, models and
    secrets while each believes it owns them. The lock is an flock on
    `up.lock`, which also records the process id; the kernel releases it when
    the process ends, however it ends.
    """
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = path.open("a+", encoding="utf-8")
    except OSError as exc:
        fail(
            f"cannot use the data dir {data_dir}: {exc.strerror or exc}. Make it a writable "
            "folder for this user, or set data_dir (LLMCLOUD_DATA_DIR) to another one",
            code=2,
        )
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        fail(
            f"another llmcloud up (process {holder}) is already running on the data dir "
            f"{data_dir}; stop it first, or give this one its own data dir (LLMCLOUD_DATA_DIR)",
            code=2,
        )
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


@dataclass
class Part:
    """One child process: its name for messages, command, extra environment, ports and probe."""

    name: str
    argv: list[str]
    env: dict[str, str]
    listeners: list[Listener]
    readiness: ReadinessProbe
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    exits: list[float] = field(default_factory=list, repr=False)
    """time.monotonic() of each unexpected exit, for the restart limit."""


def parts_for(settings: Settings) -> list[Part]:
    """Return the engine, the web app and the SOCKS proxy, in start order, sharing the data dir."""
    engine_base = f"http://{_client_host(settings.engine_host)}:{settings.engine_port}"
    common = {
        "LLMCLOUD_DATA_DIR": str(settings.data_dir),
        # The web app shares the engine's cores here, so decoding yields them at once.
        "LLMCLOUD_ENGINE_BACKGROUND": str(settings.engine_background is not False).lower(),
    }
    command = [sys.executable, "-m", "llmcloud"]
    engine = Part(
        name="engine",
        argv=[*command, "engine"],
        env={
            **common,
            "LLMCLOUD_ENGINE_HOST": settings.engine_host,
            "LLMCLOUD_ENGINE_PORT": str(settings.engine_port),
        },
        listeners=[
            Listener(
                settings.engine_host,
                settings.engine_port,
                "pick another port with --engine-port (setting engine_port)",
            )
        ],
        readiness=HealthEndpoint(f"{engine_base}/healthz"),
    )
    web = Part(
        name="web app",
        argv=[*command, "web"],
        env={
            **common,
            "LLMCLOUD_WEB_HOST": settings.web_host,
            "LLMCLOUD_WEB_PORT": str(settings.web_port),
            "LLMCLOUD_ENGINE_URL": engine_base,
            **web_certificate_env(settings),
            **socks_metrics_env(settings),
        },
        listeners=web_listeners(settings),
        readiness=HealthEndpoint(
            f"https://{_client_host(settings.web_host)}:{settings.web_port}/healthz"
        ),
    )
    if not settings.socks_in_up:
        return [engine, web]
    return [engine, web, socks_part(settings, command, common)]


def web_listeners(settings: Settings) -> list[Listener]:
    listeners = [
        Listener(
            settings.web_host, settings.web_port, "pick another port with --port (setting web_port)"
        )
    ]
    if settings.tls_http_port is not None:
        remedy = "set tls_http_port to a free port, or unset it"
        listeners.append(Listener(settings.web_host, settings.tls_http_port, remedy))
    return listeners


def socks_part(settings: Settings, command: list[str], common: dict[str, str]) -> Part:
    """Return the SOCKS proxy, which reads its allow list and limits from the same settings."""
    listeners = [
        Listener(
            settings.socks_host,
            settings.socks_port,
            "set socks_port to a free port, or socks_in_up to false to start without the proxy",
        )
    ]
    if settings.socks_metrics_port is not None:
        remedy = "set socks_metrics_port to a free port, or unset it"
        listeners.append(Listener(settings.socks_host, settings.socks_metrics_port, remedy))
    return Part(
        name="SOCKS proxy",
        argv=[*command, "socks", "serve"],
        env={
            **common,
            "LLMCLOUD_SOCKS_HOST": settings.socks_host,
            "LLMCLOUD_SOCKS_PORT": str(settings.socks_port),
        },
        listeners=listeners,
        readiness=SocksGreeting(_client_host(settings.socks_host), settings.socks_port),
    )


def web_url(settings: Settings) -> str:
    return settings.public_url or f"https://{_client_host(settings.web_host)}:{settings.web_port}"


def web_certificate_env(settings: Settings) -> dict[str, str]:
    """Return the web app's certificate settings: none when configured, else one for localhost."""
    if settings.tls_cert_file or settings.tls_acme_domains:
        return {}
    files = localhost_certificate(settings)
    return {"LLMCLOUD_TLS_CERT_FILE": str(files.cert), "LLMCLOUD_TLS_KEY_FILE": str(files.key)}


def socks_metrics_env(settings: Settings) -> dict[str, str]:
    """Point the web app's monitoring at the SOCKS proxy's /metrics, when the proxy serves one.

    A proxy started from the same settings serves /metrics on socks_metrics_port: the one that
    `up` starts, or with socks_in_up false one run by `llmcloud socks serve` or the
    llmcloud-socks systemd unit.
    """
    if settings.monitoring_socks_metrics_url or settings.socks_metrics_port is None:
        return {}
    url = f"http://{_client_host(settings.socks_host)}:{settings.socks_metrics_port}/metrics"
    return {"LLMCLOUD_MONITORING_SOCKS_METRICS_URL": url}


def print_welcome(settings: Settings) -> None:
    typer.echo(f"llmcloud is running at {web_url(settings)}")
    if _has_accounts(settings):
        typer.echo("Open it and log in.")
    else:
        typer.echo("Open it and create the first account; it becomes the admin.")
    if not (settings.tls_cert_file or settings.tls_acme_domains):
        typer.echo(
            "Browsers warn about its certificate until they trust the internal CA: "
            "import the file that `llmcloud certs export-ca` prints."
        )
    if settings.socks_in_up:
        print_socks_welcome(settings)
    typer.echo("Press Ctrl-C to stop.")


def print_socks_welcome(settings: Settings) -> None:
    from llmcloud.socks.service import config_from_settings

    config = config_from_settings(settings)
    address = f"{settings.socks_host}:{settings.socks_port}"
    if config.allow_no_auth and config.listens_on_loopback:
        login = "it accepts clients without a login (socks_allow_no_auth)"
    else:
        roles = ", ".join(settings.socks_roles)
        noun = "role" if len(settings.socks_roles) == 1 else "roles"
        login = f"it takes the logins of accounts with {noun} {roles}"
    typer.echo(f"The SOCKS5 proxy for admins listens on {address}; {login}.")
    if not config.allow_list.rules:
        typer.echo(
            "It allows no destination until you list the internal hosts in socks_allow, "
            'such as socks_allow = ["10.0.0.0/8:443"] in llmcloud.toml.'
        )
    if config.listens_on_loopback:
        forward = f"{settings.socks_port}:{_client_host(settings.socks_host)}:{settings.socks_port}"
        route = f"through an SSH tunnel to this machine (ssh -L {forward} USER@HOST)"
    else:
        route = "over the private network"
    typer.echo(
        f"Admins reach it {route}, and browsers take {web_url(settings)}/proxy.pac as their "
        "proxy auto-config URL; docs/socks-proxy.md says more."
    )


def _has_accounts(settings: Settings) -> bool:
    """Return whether any account exists; False when the database cannot be read."""
    try:
        database = open_database(database_url_from_settings(settings))
    except ConfigError:
        return False
    try:
        return count_accounts(database) > 0
    except SQLAlchemyError as exc:
        log.warning("cannot count the accounts (%s); assuming there are none", exc)
        return False
    finally:
        database.dispose()


class Supervisor:
    """Starts parts in order, waits for their health checks, and stops them in reverse order."""

    def __init__(
        self,
        parts: list[Part],
        *,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        restart_limit: int = RESTART_LIMIT,
        restart_window: float = RESTART_WINDOW_SECONDS,
        restart_delay: float = RESTART_DELAY_SECONDS,
    ) -> None:
        self.parts = parts
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.restart_delay = restart_delay
        self.stop_requested = threading.Event()
        self.failure: str | None = None

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Run until a signal or a child's exit; return the exit status for `up`."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in _STOP_SIGNALS}
        try:
            if self._start_all():
                if on_ready is not None:
                    on_ready()
                self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failure else 0

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()

    def _start_all(self) -> bool:
        for part in self.parts:
            if self.stop_requested.is_set():
                return False
            self._start(part)
            if not self._wait_healthy(part):
                return False
        return True

    def _start(self, part: Part) -> None:
        log.info("starting the %s: %s", part.name, " ".join(part.argv[1:]))
        part.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            part.argv,
            env={**os.environ, **part.env},
            start_new_session=True,
            preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
        )

    def _wait_healthy(self, part: Part) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while not self.stop_requested.is_set():
            if self._died(part):
                return False
            if part.readiness.passes():
                log.info("the %s is up (%s)", part.name, part.readiness.target)
                return True
            if time.monotonic() > deadline:
                self.failure = (
                    f"the {part.name} did not answer {part.readiness.target} within "
                    f"{self.startup_timeout:.0f} s; see its log above"
                )
                return False
            self.stop_requested.wait(POLL_SECONDS)
        return False

    def _watch(self) -> None:
        while not self.stop_requested.wait(POLL_SECONDS):
            for part in self.parts:
                code = part.process.poll() if part.process else None
                if code is not None and not self._restart(part, code):
                    return

    def _restart(self, part: Part, code: int) -> bool:
        """Start a part that exited again; return False when `up` must stop instead."""
        while True:
            now = time.monotonic()
            part.exits = [t for t in part.exits if now - t < self.restart_window] + [now]
            if len(part.exits) >= self.restart_limit:
                self.failure = (
                    f"the {part.name} exited unexpectedly {len(part.exits)} times within "
                    f"{self.restart_window:.0f} s, the last time with status {code}, so "
                    "llmcloud stopped; its log above says why"
                )
                return False
            restarts = len(part.exits)
            delay = min(self.restart_delay * 2 ** (restarts - 1), RESTART_DELAY_MAX_SECONDS)
            log.warning(
                "the %s exited unexpectedly with status %s; starting it again in %.0f s "
                "(restart %d of at most %d within %.0f s)",
                part.name,
                code,
                delay,
                restarts,
                self.restart_limit - 1,
                self.restart_window,
            )
            if self.stop_requested.wait(delay):
                return False
            self._start(part)
            if self._wait_healthy(part):
                log.info("the %s is serving again", part.name)
                return True
            new_code = part.process.poll() if part.process else None
            if self.stop_requested.is_set() or new_code is None:
                # Stopped by a signal, or still running but not ready in time.
                return False
            # It died again while starting; count that exit too.
            code = new_code
            self.failure = None

    def _died(self, part: Part) -> bool:
        """Return whether the part's process has exited, recording the failure if so."""
        code = part.process.poll() if part.process else None
        if code is None:
            return False
        self.failure = (
            f"the {part.name} exited unexpectedly with status {code}, so llmcloud stopped; "
            "its log above says why"
        )
        return True

    def _stop_all(self) -> None:
        for part in reversed(self.parts):
            process = part.process
            if process is None or process.poll() is not None:
                continue
            log.info("stopping the %s", part.name)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the %s did not stop within %.0f s; killing it", part.name, self.stop_timeout
                )
                process.kill()
                process.wait()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _client_host(host: str) -> str:
    """Return an address that reaches a server listening on `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _stop_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when `up` dies, even by SIGKILL.

    Without it a killed supervisor leaves its children running and holding their ports.
    PR_SET_PDEATHSIG is option 1 of prctl(2).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)
