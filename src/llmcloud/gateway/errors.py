"""Errors that the gateway raises before a chat starts, each carrying its HTTP status."""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidChatRequest(GatewayError):
    """The messages or options of a chat are invalid; the message names the field."""

    status_code = 400


class InvalidBackends(GatewayError):
    """A list of backends that cannot be used together, such as two with one name."""

    status_code = 400


class UnknownModel(GatewayError):
    """No backend lists the model."""

    status_code = 404

    def __init__(self, model: str, known: list[str]) -> None:
        if known:
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            hint = f"pick one of: {shown}"
        else:
            hint = "no backend lists any model; pull one or add a backend that has it"
        super().__init__(f"model '{model}' not found on any backend; {hint}")
        self.model = model
        self.known = known


class ServiceUnavailable(GatewayError):
    """The request cannot be served now; the client should retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayBusy(ServiceUnavailable):
    """The model's queue is full."""


class NoBackendAvailable(ServiceUnavailable):
    """Every backend that serves the model is unhealthy, or none has answered a health check."""
