"""Errors of the certificate package, each carrying the HTTP status it maps to."""

from __future__ import annotations


class TLSError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CertificateError(TLSError):
    """A certificate or key file that is missing, unreadable, mismatched or outside its validity."""

    status_code = 400


class AcmeError(TLSError):
    """The ACME CA returned an error, or a challenge could not be completed."""

    status_code = 502


class ListenError(TLSError):
    """A port for HTTPS or its plain-HTTP redirect cannot be opened."""
