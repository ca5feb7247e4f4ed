"""Start-up migrations: a backup first, and a failed migration leaves the database unchanged."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmcloud.db import Database, open_database
from llmcloud.db import database as database_module
from llmcloud.db.errors import ServiceError
from llmcloud.deploy.upgrade import UpgradeError, migrate_with_backup
from llmcloud.settings import Settings
from tests.db.read_only import read_only

NEWER_REVISION = "9001"
_MIGRATION = '''"""A migration that only a test adds."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("upgrade_probe", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO upgrade_probe (id) VALUES (1)")
    {last_step}


def downgrade() -> None:
    op.drop_table("upgrade_probe")
'''


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """A database at today's newest revision, holding one user, before a newer version starts."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'llmcloud.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = open_database(url)
    database.upgrade()
    with database.transaction() as session:
        session.execute(
            sa.text(
                "INSERT INTO users (username, password_hash, role, created_at) "
                "VALUES ('alice', 'x', 'admin', CURRENT_TIMESTAMP)"
            )
        )
    yield database
    database.dispose()


def _add_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fails: bool) -> None:
    """Copy the migrations and add one after the newest, as a newer llmcloud would ship."""
    folder = tmp_path / "migrations"
    shutil.copytree(database_module.MIGRATIONS_DIR, folder)
    head = open_database(f"sqlite:///{tmp_path / 'probe.db'}").head_revision()
    last_step = 'op.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")' if fails else "pass"
    (folder / "versions" / f"{NEWER_REVISION}_probe.py").write_text(
        _MIGRATION.format(revision=NEWER_REVISION, down_revision=head, last_step=last_step)
    )
    monkeypatch.setattr(database_module, "MIGRATIONS_DIR", folder)


def _table_names(database: Database) -> set[str]:
    return set(sa.inspect(database.engine).get_table_names())


def _user_count(database: Database) -> int:
    with database.session() as session:
        return int(session.execute(sa.text("SELECT count(*) FROM users")).scalar_one())


def test_migration_runs_after_backup(
    old_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = old_database.current_revision()
    _add_migration(tmp_path, monkeypatch, fails=False)
    revisions_at_backup: list[str | None] = []

    result = migrate_with_backup(
        Settings(data_dir=tmp_path),
        old_database,
        backup=lambda settings, database: revisions_at_backup.append(database.current_revision()),
    )

    assert revisions_at_backup == [before]
    assert result.backed_up
    assert result.after == NEWER_REVISION
    assert old_database.current_revision() == NEWER_REVISION


def test_failed_migration_leaves_database_unchanged(
    old_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = old_database.current_revision()
    _add_migration(tmp_path, monkeypatch, fails=True)

    with pytest.raises(UpgradeError) as caught:
        migrate_with_backup(Settings(data_dir=tmp_path), old_database, backup=lambda s, d: None)

    assert f"still at revision {before}" in str(caught.value)
    assert old_database.current_revision() == before
    assert "upgrade_probe" not in _table_names(old_database)
    assert _user_count(old_database) == 1


def test_read_only_migration_advises_making_it_writable(
    old_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = old_database.current_revision()
    _add_migration(tmp_path, monkeypatch, fails=False)
    url = old_database.engine.url.render_as_string(hide_password=False)

    with read_only(url, old_database), pytest.raises(UpgradeError) as caught:
        migrate_with_backup(Settings(data_dir=tmp_path), old_database, backup=lambda s, d: None)

    message = str(caught.value)
    assert "failed because the database is read-only" in message
    assert f"still at revision {before}" in message
    assert "writable" in message
    assert "Run the previous llmcloud version" not in message
    assert old_database.current_revision() == before


def test_failed_backup_stops_before_migration(
    old_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = old_database.current_revision()
    _add_migration(tmp_path, monkeypatch, fails=False)

    def failing_backup(settings: Settings, database: Database) -> None:
        raise ServiceError("backup target /mnt/backups not found")

    with pytest.raises(UpgradeError) as caught:
        migrate_with_backup(Settings(data_dir=tmp_path), old_database, backup=failing_backup)

    assert "nothing was migrated" in str(caught.value)
    assert "/mnt/backups not found" in str(caught.value)
    assert old_database.current_revision() == before


def test_new_database_migrates_without_backup(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'new.db'}")
    calls: list[object] = []

    result = migrate_with_backup(
        Settings(data_dir=tmp_path), database, backup=lambda s, d: calls.append(d)
    )
    head = database.head_revision()
    database.dispose()

    assert calls == []
    assert not result.backed_up
    assert result.after == head


def test_new_database_migrates_without_redis(tmp_path: Path) -> None:
    # The lock for the backup before a migration may live in Redis, but a new database needs no
    # backup, so a first start works while Redis is down.
    database = open_database(f"sqlite:///{tmp_path / 'new.db'}")
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")

    result = migrate_with_backup(settings, database)
    head = database.head_revision()
    database.dispose()

    assert not result.backed_up
    assert result.after == head


def test_current_database_skips_backup(old_database: Database, tmp_path: Path) -> None:
    calls: list[object] = []

    result = migrate_with_backup(
        Settings(data_dir=tmp_path), old_database, backup=lambda s, d: calls.append(d)
    )

    assert calls == []
    assert not result.backed_up


def test_default_hook_writes_backup_before_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    database = open_database(f"sqlite:///{data_dir / 'llmcloud.db'}")
    database.upgrade()
    _add_migration(tmp_path, monkeypatch, fails=False)
    targets = tmp_path / "backups"
    settings = Settings(data_dir=data_dir, backup_targets=[str(targets)])

    result = migrate_with_backup(settings, database)
    database.dispose()

    assert result.backed_up
    assert result.after == NEWER_REVISION
    assert any(targets.iterdir())
