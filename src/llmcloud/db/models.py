"""SQLAlchemy models of every table llmcloud stores.

The schema itself is created and changed only by the Alembic revisions in
`llmcloud/db/migrations/versions/`; a test compares those revisions with these
models. Times are stored in UTC and always come back timezone-aware, on SQLite
as well as PostgreSQL. Enumerated columns are VARCHAR with a CHECK constraint,
not native PostgreSQL enums, so that adding a value needs no type migration.
Rows that belong to a user (sessions, API keys, chats, identities) are removed
by ON DELETE CASCADE when the user is deleted. Audit events keep their row and
lose the actor (ON DELETE SET NULL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit key on PostgreSQL; SQLite needs plain INTEGER for an auto-increment rowid alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC that is always read back timezone-aware.

    SQLite has no time zone type, so values are stored there as naive UTC text;
    PostgreSQL stores `timestamptz`. Naive datetimes are rejected on write.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; expected a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    PENDING = "pending"


class MessageRole(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class BackendKind(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


def _enum(members: type[StrEnum], name: str) -> sa.Enum:
    """Build a VARCHAR(16) column type with a CHECK constraint named `ck_<table>_<name>`."""
    return sa.Enum(
        members,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda enum: [member.value for member in enum],
    )


# SQLite otherwise gives the id of a deleted newest row to the next one (migration 0003).
NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime()}


class User(Base):
    """An account. `username` is unique regardless of case; `password_hash` is
    NULL for accounts that only log in through an identity provider."""

    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64))
    email: Mapped[str | None] = mapped_column(sa.String(320))
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"), default=Role.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    deactivated_at: Mapped[datetime | None]

    @property
    def is_active(self) -> bool:
        return self.deactivated_at is None


# Usernames are ASCII (see llmcloud.auth.accounts), so lower() agrees between
# Python, SQLite and PostgreSQL.
sa.Index("uq_users_username_lower", sa.func.lower(User.username), unique=True)


class UserSession(Base):
    """A logged-in browser. Only the SHA-256 of the cookie token is stored."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(200))


class ApiKey(Base):
    """A key for the OpenAI-compatible API. `prefix` is the start of the key,
    shown in lists; the whole key is stored only as its SHA-256."""

    __tablename__ = "api_keys"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    prefix: Mapped[str] = mapped_column(sa.String(16))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Chat(Base):
    """A conversation. `id` is a random URL-safe string, so ids cannot be guessed."""

    __tablename__ = "chats"
    __table_args__ = (sa.Index("ix_chats_user_id_updated_at", "user_id", "updated_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(sa.String(200))
    model: Mapped[str | None] = mapped_column(sa.String(200))
    system_prompt: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One turn of a chat. An assistant message cut off by a failing backend
    keeps its partial `content` with status `interrupted`."""

    __tablename__ = "messages"
    __table_args__ = (sa.Index("ix_messages_chat_id_id", "chat_id", "id"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    chat_id: Mapped[str] = mapped_column(sa.ForeignKey("chats.id", ondelete="CASCADE"))
    role: Mapped[MessageRole] = mapped_column(_enum(MessageRole, "role"))
    content: Mapped[str] = mapped_column(sa.Text)
    model: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[MessageStatus] = mapped_column(
        _enum(MessageStatus, "status"), default=MessageStatus.COMPLETE
    )
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text)


class Backend(Base):
    """A model server that the gateway routes to."""

    __tablename__ = "backends"
    __table_args__ = (
        sa.CheckConstraint("weight >= 0", name="weight_not_negative"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[BackendKind] = mapped_column(_enum(BackendKind, "kind"))
    base_url: Mapped[str] = mapped_column(sa.String(2048))
    # NOTE: stored as given; encrypting it with a key from <data_dir>/secrets/ is up to
    # the gateway, which is the only reader.
    api_key: Mapped[str | None] = mapped_column(sa.Text)
    weight: Mapped[int] = mapped_column(default=1)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Identity(Base):
    """An account at an external identity provider (GitHub, OIDC) linked to a user.

    `subject` is the provider's stable user id (GitHub's numeric id, OIDC `sub`).
    """

    __tablename__ = "identities"
    __table_args__ = (
        sa.UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(sa.String(32))
    subject: Mapped[str] = mapped_column(sa.String(255))
    email: Mapped[str | None] = mapped_column(sa.String(320))
    email_verified: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class AuditEvent(Base):
    """A security-relevant event such as a login. `reason` is a short code
    (`bad_password`, `pending`), never a secret."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_user_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    action: Mapped[str] = mapped_column(sa.String(64))
    provider: Mapped[str | None] = mapped_column(sa.String(32))
    outcome: Mapped[Outcome] = mapped_column(_enum(Outcome, "outcome"))
    reason: Mapped[str | None] = mapped_column(sa.String(64))


class KeyFingerprint(Base):
    """The fingerprint of a secret key that every web instance on this database must share.

    `recorded_at` is ISO 8601 text in UTC, as releases before this table's migration wrote it.
    """

    __tablename__ = "key_fingerprints"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    recorded_at: Mapped[str] = mapped_column(sa.String(40))
