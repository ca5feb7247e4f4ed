"""An in-process cache of API keys that passed the check, so that most requests skip the database.

Security design: only keys that authenticated an active account are cached,
never failures, so an unknown, revoked or blocked key is checked in the
database every time. An entry lives at most TTL_SECONDS. Every change that
can end a key's access made in this process (revoking a key; approving,
changing the role of, deactivating, reactivating or deleting an account)
invalidates the whole cache when its transaction commits, so it applies to
the next request at once. A change made by another process, such as another
`llmcloud web` instance on a shared PostgreSQL or an `llmcloud` command,
applies here within TTL_SECONDS.

An entry in the second half of its life is still served, and the request
that finds it asks for a check of the key in the background (see
`CachedKey.renew_after`). That check reads the database as a first check
does and replaces the entry, or drops it when the key no longer works. A
key in steady use thus keeps a fresh entry, and its requests do not wait
for the database when an entry runs out. No entry is served past its
TTL_SECONDS, so the bound on a change made elsewhere stays the same.

Invalidation bumps a generation number. A lookup records the generation
before it reads the database and stores its entry under that generation,
so an answer read before a change can never outlive it.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from datetime import datetime

from llmcloud.db.database import Database
from llmcloud.db.models import User

TTL_SECONDS = 5.0
# The age from which a request that an entry serves has its key checked again in the background.
RENEW_AFTER_SECONDS = TTL_SECONDS / 2
# Entries kept per database; past it, the oldest ones are dropped.
MAX_ENTRIES = 10_000

_generation = 0
_caches: weakref.WeakKeyDictionary[Database, dict[str, CachedKey]] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class CachedKey:
    user: User
    """The key's account, detached from its session."""
    key_id: int
    last_used_at: datetime | None
    expires: float
    """time.monotonic() after which the entry is stale."""
    renew_after: float
    """time.monotonic() after which a request that the entry serves should have the key
    checked again in the background."""
    generation: int


def generation() -> int:
    """Return the current generation; pass it to `store()` for a lookup that starts now."""
    return _generation


def invalidate() -> None:
    """Forget every cached key, in every database of this process."""
    global _generation
    _generation += 1


def lookup(db: Database, key_hash: str) -> CachedKey | None:
    """Return the fresh entry of a key, or None when the database must be asked."""
    cache = _caches.get(db)
    if cache is None:
        return None
    entry = cache.get(key_hash)
    if entry is None:
        return None
    if entry.generation != _generation or time.monotonic() >= entry.expires:
        del cache[key_hash]
        return None
    return entry


def store(
    db: Database,
    key_hash: str,
    user: User,
    key_id: int,
    last_used_at: datetime | None,
    lookup_generation: int,
) -> None:
    """Cache a key that authenticated `user`, read from the database under `lookup_generation`."""
    if lookup_generation != _generation:
        return
    cache = _caches.setdefault(db, {})
    if len(cache) >= MAX_ENTRIES:
        del cache[next(iter(cache))]
    now = time.monotonic()
    cache[key_hash] = CachedKey(
        user, key_id, last_used_at, now + TTL_SECONDS, now + RENEW_AFTER_SECONDS, lookup_generation
    )


def forget(db: Database, key_hash: str) -> None:
    """Drop a key's entry, as when a check found that the key no longer works."""
    cache = _caches.get(db)
    if cache is not None:
        cache.pop(key_hash, None)
