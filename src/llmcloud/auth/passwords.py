"""Password hashing with argon2id, and the password policy.

Hashes are argon2-cffi's encoded strings (`$argon2id$v=19$m=...`), which carry
their own salt and parameters, so raising the parameters later only needs
`needs_rehash()` at the next successful login. The default hasher uses
argon2-cffi's defaults, the RFC 9106 low-memory profile (3 passes, 64 MiB,
4 lanes). Every function takes the hasher as an argument so that tests can
pass one with cheaper parameters.

The policy is a length check only: 8 to 1024 characters, and not the
username. The upper bound keeps a single login request from costing much
more than an ordinary one.
"""

from __future__ import annotations

import functools
import logging

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from llmcloud.db.errors import InvalidInput

log = logging.getLogger("llmcloud.auth")

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
DEFAULT_HASHER = PasswordHasher()


def check_password_policy(password: str, *, username: str | None = None) -> None:
    """Raise InvalidInput naming the rule the password breaks; the message never contains it."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password is too short: {len(password)} characters, "
            f"expected at least {MIN_PASSWORD_LENGTH}"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password is too long: {len(password)} characters, "
            f"expected at most {MAX_PASSWORD_LENGTH}"
        )
    if username is not None and password.casefold() == username.casefold():
        raise InvalidInput("password must differ from the username; choose another password")


def hash_password(password: str, hasher: PasswordHasher = DEFAULT_HASHER) -> str:
    return hasher.hash(password)


def verify_password(
    stored_hash: str, password: str, hasher: PasswordHasher = DEFAULT_HASHER
) -> bool:
    """Return whether `password` matches `stored_hash`.

    A stored value that is not an argon2 hash counts as a mismatch and is
    logged, because it means the row was written by something else.
    """
    try:
        return hasher.verify(stored_hash, password)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError) as exc:
        log.warning("stored password hash cannot be verified (%s); treating it as a mismatch", exc)
        return False


def needs_rehash(stored_hash: str, hasher: PasswordHasher = DEFAULT_HASHER) -> bool:
    """Return whether the hash was made with other parameters than `hasher` uses."""
    try:
        return hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


def spend_verification_time(password: str, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
    """Verify `password` against a fixed hash, so that a login for an unknown user
    takes as long as one for a known user with a wrong password."""
    verify_password(_dummy_hash(hasher), password, hasher)


@functools.lru_cache(maxsize=8)
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash("llmcloud dummy password for timing")
