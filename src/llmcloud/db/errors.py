"""Domain errors of storage and accounts, each carrying the HTTP status it maps to.

The family lives in the storage layer, the lowest one, so that the chat
repository here and the account services in `llmcloud.auth` raise the same
types. The web layer converts them to responses in one place:
`status_code` becomes the HTTP status and `message` the body text. A message
names the value that was wrong, what was expected and what to do, and never
contains a password, token or key.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """A value that breaks a rule: a username, a password, an import file, a title."""

    status_code = 422


class Unauthorized(ServiceError):
    """Missing or wrong credentials: the client should log in or send a valid key."""

    status_code = 401


class Forbidden(ServiceError):
    """Valid credentials, but the account may not do this."""

    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request clashes with stored state, such as a username that is already taken."""

    status_code = 409


def quote_value(value: str, limit: int = 64) -> str:
    """Quote a user-supplied value for an error message, cut to `limit` characters."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)
