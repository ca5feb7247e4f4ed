"""Errors of accounts, sessions and API keys, each carrying its HTTP status.

They extend the family in `llmcloud.db.errors`, which is re-exported here, so
the web layer can catch `ServiceError` for all of them and the specific
classes where a page differs (the waiting-for-approval page for
`AccountPending`, the login page for `SessionExpired`).
"""

from __future__ import annotations

from llmcloud.db.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceError,
    Unauthorized,
)

__all__ = [
    "AccountDeactivated",
    "AccountPending",
    "Conflict",
    "CsrfFailed",
    "Forbidden",
    "InvalidCredentials",
    "InvalidInput",
    "NotFound",
    "ServiceError",
    "SessionExpired",
    "SignupClosed",
    "Unauthorized",
]


class InvalidCredentials(Unauthorized):
    """Unknown user, wrong password or unknown API key; the message does not say which."""


class SessionExpired(Unauthorized):
    """The session cookie names no live session: logged out, expired or never valid."""


class AccountPending(Forbidden):
    """The password was right, but an admin has not approved the account yet."""


class AccountDeactivated(Forbidden):
    """The account was deactivated by an admin."""


class SignupClosed(Forbidden):
    """Sign-up is switched off (`signup_mode = "closed"`)."""


class CsrfFailed(Forbidden):
    """A state-changing request without the session's CSRF token."""
