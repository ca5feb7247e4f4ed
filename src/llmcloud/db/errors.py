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


class DatabaseReadOnly(ServiceError):
    """The database rejected a write because it, or the connection to it, is read-only.

    `message` is for clients and names nothing on the server. `operator_message`
    names the database (`safe_url`, without its password) and the driver's
    message, and gives the change to make, for start-up errors.
    """

    status_code = 503

    def __init__(self, safe_url: str, driver_message: str, advice: str) -> None:
        super().__init__(
            "the server's database is read-only, so this request failed; "
            "an operator must make the database writable"
        )
        self.safe_url = safe_url
        self.driver_message = driver_message
        self.advice = advice

    @property
    def operator_message(self) -> str:
        return f"the database {self.safe_url} is read-only ({self.driver_message}); {self.advice}"


def quote_value(value: str, limit: int = 64) -> str:
    """Quote a user-supplied value for an error message, cut to `limit` characters."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)
