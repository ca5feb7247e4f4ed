"""The error of a failed provider log-in, with its HTTP status and a reason code.

The reason code (`state_mismatch`, `id_token_wrong_audience`, ...) goes into
the audit event and the log. The message is shown to the user and never
contains a token, a code or a secret.
"""

from __future__ import annotations

from llmcloud.db.errors import ServiceError


class LoginFailed(ServiceError):
    def __init__(self, message: str, *, reason: str, status_code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.status_code = status_code


def bad_request(reason: str, message: str) -> LoginFailed:
    return LoginFailed(message, reason=reason, status_code=400)


def unauthorized(reason: str, message: str) -> LoginFailed:
    return LoginFailed(message, reason=reason, status_code=401)


def forbidden(reason: str, message: str) -> LoginFailed:
    return LoginFailed(message, reason=reason, status_code=403)


def bad_gateway(reason: str, message: str) -> LoginFailed:
    return LoginFailed(message, reason=reason, status_code=502)
