"""Model backends that admins add on the admin page, stored in the `backends` table.

Backends from the settings (`gateway_backends`) are not stored here; the web
app merges both lists and hands them to the gateway. This module checks only
what the table needs (a unique name, a known kind, a weight of 0 or more).
The web layer validates the rest through the gateway's `Backend` model
before it calls `add_backend()`. Functions return detached objects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from llmcloud.db.database import Database
from llmcloud.db.errors import Conflict, InvalidInput, NotFound, quote_value
from llmcloud.db.models import Backend, BackendKind

log = logging.getLogger("llmcloud.db")

MAX_NAME_LENGTH = 64
MAX_URL_LENGTH = 2048


def list_backends(db: Database) -> Sequence[Backend]:
    """Return the stored backends, oldest first."""
    with db.session() as session:
        return session.scalars(sa.select(Backend).order_by(Backend.id)).all()


def add_backend(
    db: Database,
    *,
    name: str,
    kind: BackendKind | str,
    base_url: str,
    api_key: str | None = None,
    weight: int = 1,
    enabled: bool = True,
) -> Backend:
    """Store a backend and return it. Raises InvalidInput or Conflict for a taken name."""
    kind = _parse_kind(kind)
    _check_lengths(name, base_url)
    if weight < 0:
        raise InvalidInput(f"backend weight {weight} is negative; expected 0 or more")

    record = Backend(
        name=name, kind=kind, base_url=base_url, api_key=api_key, weight=weight, enabled=enabled
    )
    try:
        with db.transaction() as session:
            # Names differing only in case would read as one backend on the admin pages.
            same_name = sa.func.lower(Backend.name) == name.lower()
            existing = session.scalars(sa.select(Backend.name).where(same_name)).first()
            if existing is not None:
                raise Conflict(
                    f"backend name {quote_value(name)} is already taken by "
                    f"{quote_value(existing)}; choose another"
                )
            session.add(record)
    except IntegrityError:
        raise Conflict(
            f"backend name {quote_value(name)} was taken by a backend added at the same time; "
            "choose another"
        ) from None
    log.info("backend %s (%s) stored", record.id, name)
    return record


def remove_backend(db: Database, backend_id: int) -> Backend:
    """Delete a stored backend and return what it was. Raises NotFound for an unknown id."""
    with db.transaction() as session:
        record = session.get(Backend, backend_id)
        if record is None:
            raise NotFound(f"backend {backend_id} not found; it may have been removed already")
        session.delete(record)
    log.info("backend %s (%s) removed", backend_id, record.name)
    return record


def _parse_kind(kind: BackendKind | str) -> BackendKind:
    try:
        return BackendKind(kind)
    except ValueError:
        choices = ", ".join(member.value for member in BackendKind)
        raise InvalidInput(
            f"backend kind {quote_value(str(kind))} is unknown; expected one of: {choices}"
        ) from None


def _check_lengths(name: str, base_url: str) -> None:
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidInput(
            f"backend name {quote_value(name)} has {len(name)} characters; "
            f"expected 1 to {MAX_NAME_LENGTH}"
        )
    if not 1 <= len(base_url) <= MAX_URL_LENGTH:
        raise InvalidInput(
            f"backend URL has {len(base_url)} characters; expected 1 to {MAX_URL_LENGTH}"
        )
