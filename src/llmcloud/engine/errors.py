"""Errors of the engine, each carrying the HTTP status it maps to."""

from __future__ import annotations


class EngineError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(EngineError):
    status_code = 400


class ModelNotFound(EngineError):
    status_code = 404

    def __init__(self, name: str, hint: str = "") -> None:
        message = f"model '{name}' not found"
        if hint:
            message += f"; {hint}"
        super().__init__(message)
        self.name = name


class BlobNotFound(EngineError):
    status_code = 404


class InvalidModelFile(EngineError):
    """A file that is not a usable GGUF model, or whose digest does not match."""

    status_code = 400


class Unauthorized(EngineError):
    status_code = 401


class PayloadTooLarge(EngineError):
    status_code = 413


class ServerBusy(EngineError):
    """The model's queue is full; the client should retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PullError(EngineError):
    status_code = 502
