"""The state of every certificate in use, for `llmcloud certs list` and for metrics.

Servers and the renewal loop record here which certificate they serve, its
not-after time, and each renewal failure. A metrics module reads
`STATUS.snapshot()`; nothing here depends on one.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ServedCertificate:
    """One certificate in use: where it is served, its file and expiry, and renewal results."""

    served_at: str
    cert_path: Path
    serial: int = 0
    not_after: dt.datetime | None = None
    renewal_failures_total: int = 0
    last_error: str | None = None
    last_renewal: dt.datetime | None = None


class CertificateStatus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, ServedCertificate] = {}

    def record_served(
        self, served_at: str, cert_path: Path, serial: int, not_after: dt.datetime
    ) -> None:
        with self._lock:
            old = self._entries.get(served_at) or ServedCertificate(served_at, cert_path)
            self._entries[served_at] = replace(
                old, cert_path=cert_path, serial=serial, not_after=not_after
            )

    def record_renewal(self, served_at: str, cert_path: Path, error: str | None) -> None:
        """Count a renewal attempt: a failure with its error, or a success (error None)."""
        with self._lock:
            old = self._entries.get(served_at) or ServedCertificate(served_at, cert_path)
            failures = old.renewal_failures_total + (1 if error else 0)
            last_renewal = old.last_renewal if error else dt.datetime.now(dt.UTC)
            self._entries[served_at] = replace(
                old, renewal_failures_total=failures, last_error=error, last_renewal=last_renewal
            )

    def snapshot(self) -> list[ServedCertificate]:
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


STATUS = CertificateStatus()
