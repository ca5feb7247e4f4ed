"""Start-up of the web app's server: listen on web_host:web_port and run uvicorn."""

from __future__ import annotations

import gc
import logging

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from llmcloud.auth.secret_key import SecretKeyError
from llmcloud.backup.errors import BackupError
from llmcloud.backup.schedule import check_schedules
from llmcloud.db import Database, database_url_from_settings, open_database
from llmcloud.db.errors import DatabaseReadOnly
from llmcloud.deploy.shared_keys import SharedKeyMismatchError, check_session_key
from llmcloud.deploy.upgrade import UpgradeError, migrate_with_backup
from llmcloud.listen import ListenError, bind_socket
from llmcloud.settings import ConfigError, Settings
from llmcloud.tls.errors import TLSError
from llmcloud.tls.serving import https_for, wrap_for_https
from llmcloud.web.app import create_app, prepare_data_dir

log = logging.getLogger("llmcloud.web")

FULL_COLLECTION_THRESHOLD = 1000
"""The garbage collector's third threshold in the web process: generation-1 collections
before a full collection is considered (Python's default is 10)."""


class StartupError(Exception):
    """A reason the web app cannot start, worded for the operator."""


def serve(settings: Settings) -> None:
    """Run the web app until interrupted."""
    try:
        check_schedules(settings)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    database = open_and_migrate(settings)
    try:
        check_session_key(database, settings)
        app = create_app(settings, database=database, schedule_backups=True)
    except (OSError, SecretKeyError) as exc:
        database.dispose()
        raise StartupError(f"cannot read or create the session key: {exc}") from None
    except SharedKeyMismatchError as exc:
        database.dispose()
        raise StartupError(str(exc)) from None

    try:
        tls = https_for(settings)
    except TLSError as exc:
        database.dispose()
        raise StartupError(exc.message) from None
    try:
        sock = bind_socket(settings.web_host, settings.web_port, setting="web_port")
    except ListenError as exc:
        raise StartupError(str(exc)) from None
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    log.info("web app listening on %s://%s:%s (data dir %s)", scheme, host, port, settings.data_dir)
    config = uvicorn.Config(
        wrap_for_https(app, settings),
        log_config=None,
        access_log=False,
        # create_app() honours X-Forwarded-* from trusted_proxies only; uvicorn's own
        # handling would also trust 127.0.0.1 whatever the setting says.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        ws_max_size=4 * settings.web_max_prompt_length + 64 * 1024,
        **(tls.uvicorn_options() if tls else {}),
    )
    prepare_garbage_collector()
    try:
        if tls:
            tls.start()
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if tls:
            tls.stop()
        database.dispose()


def prepare_garbage_collector() -> None:
    """Keep start-up objects out of full garbage collections, and make full collections rare.

    A full collection walks every tracked object and stops the event loop meanwhile,
    every open stream included. The objects of a created web app, about 180,000, took
    about 80 ms, measured on a 2-core VM, so they are frozen: gc.freeze() keeps them out
    of all later collections. The objects of 1,000 open streams still took 30 to 90 ms
    per full collection, six times in one run of the gateway benchmark's concurrency
    test (benchmarks/gatewaybench), and almost all of them survived. With the third
    threshold at FULL_COLLECTION_THRESHOLD in place of Python's 10, such runs had no full
    collection in the web process, and their p99 added inter-token delay fell from 83 ms
    to 9.5 ms on the same 2-core VM.
    """
    gc.collect()
    gc.freeze()
    # NOTE: reference cycles that reach the oldest generation are freed about 100 times
    # later than with the default (an estimate from the ratio of the thresholds).
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)


def open_and_migrate(settings: Settings) -> Database:
    """Open the database, migrate it to the newest schema and check that it accepts writes.

    Before the migration the data dir is checked and gets its instance.json
    (`prepare_data_dir`), and a database behind the newest schema is backed up.
    Raises StartupError naming the problem when any of these steps fails.
    """
    try:
        database = open_database(database_url_from_settings(settings))
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        prepare_data_dir(settings)
        migrate_with_backup(settings, database)
        database.check_writable()
    except UpgradeError as exc:
        database.dispose()
        raise StartupError(str(exc)) from None
    except DatabaseReadOnly as exc:
        database.dispose()
        raise StartupError(exc.operator_message) from None
    except BackupError as exc:
        database.dispose()
        raise StartupError(exc.message) from None
    except SQLAlchemyError as exc:
        database.dispose()
        first_line = str(exc).strip().splitlines()[0]
        raise StartupError(
            f"cannot open or migrate the database {database.safe_url}: {first_line}"
        ) from None
    return database
