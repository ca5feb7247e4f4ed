"""Opening the database, transactions and schema migrations.

SQLite is the default: one file, `<data_dir>/llmcloud.db`, in WAL mode so
that reads go on while a write is in progress, with foreign keys enforced
and a busy timeout. SQLAlchemy emits BEGIN itself instead of leaving it to
the sqlite3 module, so DDL and savepoints are transactional.
`Database.transaction()` begins with BEGIN IMMEDIATE, which takes SQLite's
single write lock before the first read. Two writers then queue on the busy
timeout. With a plain BEGIN, a writer that read first fails at once with
"database is locked" when another writer took the lock in between.

PostgreSQL is used when the URL names it, through psycopg 3 (`postgresql://`
URLs are mapped to the `postgresql+psycopg` driver). `Database.lock()` takes
a transaction-scoped advisory lock there. On SQLite the write lock of
`transaction()` already serialises writers.

On either database, a write that fails because the database is read-only
raises `llmcloud.db.errors.DatabaseReadOnly` (see `llmcloud.db.read_only`).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from llmcloud.db.read_only import convert_read_only_error
from llmcloud.settings import ConfigError, Settings

log = logging.getLogger("llmcloud.db")

DATABASE_FILE = "llmcloud.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
_BEGIN_OPTION = "llmcloud_sqlite_begin"
# A write that changes nothing, for check_writable().
_WRITE_CHECK = "UPDATE alembic_version SET version_num = version_num"


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / DATABASE_FILE}"


def database_url_from_settings(settings: Settings) -> str:
    """Return `database_url` when set, else the SQLite file in the data dir."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return default_database_url(settings.data_dir)


class Database:
    """An engine with its session factories. Create it with `open_database()`.

    `session()` gives a plain session for reads; `transaction()` gives one
    that commits on success and rolls back on any exception. Objects loaded
    through either stay readable after the block ends (`expire_on_commit` is
    off), but changing them then saves nothing.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        writer = engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """Name of the SQLAlchemy dialect: `sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with its password replaced by stars, for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._write_sessions() as session, session.begin():
            yield session

    def lock(self, session: Session, name: str) -> None:
        """Hold the named lock until the transaction of `session` ends.

        Call it inside `transaction()`. Writers that take the same name run
        one after another, even from several processes on one PostgreSQL.
        """
        if self.dialect != "postgresql":
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to `revision`, creating every table on an empty database."""
        before = self.current_revision()
        config = _alembic_config()
        if self.dialect == "sqlite":
            self._upgrade_sqlite(config, revision)
        else:
            with self._write_sessions() as session, session.begin():
                self.lock(session, "llmcloud.db.migrations")
                config.attributes["connection"] = session.connection()
                command.upgrade(config, revision)
        after = self.current_revision()
        if before != after:
            log.info("database %s migrated from %s to %s", self.safe_url, before, after)
            if self.dialect == "sqlite":
                self._checkpoint_wal()

    def _upgrade_sqlite(self, config: Config, revision: str) -> None:
        """Migrate with foreign keys off, as SQLite requires for rebuilding a table.

        Dropping a table, even to rename its copy into place, would otherwise
        delete the rows that reference it. Keys are checked before the commit.
        """
        with self.engine.connect() as connection:
            # The pragma has no effect inside a transaction, so it goes before BEGIN.
            raw = connection.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys=OFF")
            try:
                connection.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        tables = sorted({str(row[0]) for row in broken})
                        log.warning(
                            "database %s has %d rows whose foreign key names no row, in %s",
                            self.safe_url,
                            len(broken),
                            ", ".join(tables),
                        )
            finally:
                raw.execute("PRAGMA foreign_keys=ON")

    def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database file and truncate it, once a migration has committed.

        A migration that rebuilds tables leaves a WAL that can be larger than the
        database, and until a checkpoint the database file alone still reads as the
        old revision.
        """
        with self.engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            assert raw is not None
            try:
                busy, frames, copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                log.warning(
                    "database %s: checkpoint after the migration failed: %s", self.safe_url, exc
                )
                return
        if busy:
            log.warning(
                "database %s: checkpoint after the migration did not complete because another "
                "connection was using the database (%s of %s WAL frames copied); SQLite copies "
                "the rest at a later checkpoint",
                self.safe_url,
                copied,
                frames,
            )
            return
        log.info("database %s: WAL checkpointed after the migration", self.safe_url)

    def check_writable(self, lock_timeout: float | None = None) -> None:
        """Run a write that changes nothing, in a transaction that is rolled back.

        Raises DatabaseReadOnly when the database rejects writes. `lock_timeout`,
        in seconds, limits the wait for a lock that another connection holds
        (SQLite's busy timeout, PostgreSQL's lock_timeout). When it runs out,
        OperationalError is raised. Without it the check waits as any write does.
        The schema must exist, because the write is to `alembic_version`.
        """
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                self._check_writable_sqlite(connection, lock_timeout)
                return
            with connection.begin() as transaction:
                if lock_timeout is not None:
                    milliseconds = max(1, int(lock_timeout * 1000))
                    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
                connection.exec_driver_sql(_WRITE_CHECK)
                transaction.rollback()

    def _check_writable_sqlite(self, connection: sa.Connection, lock_timeout: float | None) -> None:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        if lock_timeout is not None:
            raw.execute(f"PRAGMA busy_timeout={max(1, int(lock_timeout * 1000))}")
        try:
            connection.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            with connection.begin() as transaction:
                connection.exec_driver_sql(_WRITE_CHECK)
                transaction.rollback()
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")

    def current_revision(self) -> str | None:
        """Return the schema revision the database is at, or None when it is empty."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, echo: bool = False) -> Database:
    """Open the database at `url` (`sqlite:///PATH` or `postgresql://...`).

    The schema is not touched; call `Database.upgrade()` for that. A SQLite
    file's folder is created when missing. Raises ConfigError for a URL that
    cannot be parsed or names another database. A read-only database is
    noticed at the first write, which raises DatabaseReadOnly.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, echo)
    else:
        engine = sa.create_engine(parsed, echo=echo, pool_pre_ping=True)
    sa.event.listen(engine, "handle_error", convert_read_only_error)
    database = Database(engine)
    log.info("database %s opened", database.safe_url)
    return database


def _parse_url(url: str) -> sa.URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "invalid database URL; expected sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None

    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "SQLite database URL names no file; expected sqlite:///PATH, "
                "for example sqlite:////var/lib/llmcloud/llmcloud.db"
            )
        return parsed
    raise ConfigError(
        f"unsupported database {parsed.drivername!r} in the database URL; "
        "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


def _sqlite_engine(url: sa.URL, echo: bool) -> Engine:
    assert url.database is not None
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    sa.event.listen(engine, "connect", _configure_sqlite_connection)
    sa.event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop the sqlite3 module from emitting BEGIN itself; _begin_sqlite_transaction does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: sa.Connection) -> None:
    begin = connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN")
    connection.exec_driver_sql(begin)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config
