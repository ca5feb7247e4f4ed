"""Renewal of the ACME certificate, run by the web app in a background thread.

A certificate is due when a third of its lifetime is left, or earlier when
the CA's ARI window (RFC 9773) suggests an earlier time. It is due at once
when it does not cover the configured domains, or when it is the internal
CA's stand-in. A failed attempt is logged, counted in `STATUS`, and retried
with exponential backoff (1 minute doubling up to 6 hours), and the served
certificate stays in place until a new one is stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from llmcloud.settings import Settings
from llmcloud.tls.acme_client import AcmeClient, AcmeConfig
from llmcloud.tls.ca import CA_NAME
from llmcloud.tls.certificates import load_chain, subject_alt_names, utcnow
from llmcloud.tls.errors import TLSError
from llmcloud.tls.status import STATUS

log = logging.getLogger("llmcloud.tls")

FIRST_RETRY = dt.timedelta(minutes=1)
MAX_RETRY = dt.timedelta(hours=6)


def lifetime_due(cert: x509.Certificate) -> dt.datetime:
    """Return the time at which a third of the certificate's lifetime is left."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - lifetime / 3


def renewal_due(
    cert: x509.Certificate, domains: list[str], ari_time: dt.datetime | None
) -> dt.datetime:
    """Return when the certificate should be renewed; a time in the past means now."""
    if set(domains) - set(subject_alt_names(cert)) or _from_internal_ca(cert):
        return cert.not_valid_before_utc
    due = lifetime_due(cert)
    if ari_time is not None and ari_time < due:
        due = ari_time
    return due


def _from_internal_ca(cert: x509.Certificate) -> bool:
    return CA_NAME in cert.issuer.rfc4514_string()


class RenewalLoop:
    """Checks the ACME certificate every `check_seconds` and renews it when due."""

    def __init__(
        self,
        acme: AcmeClient,
        domains: list[str],
        cert_path: Path,
        key_path: Path,
        *,
        check_seconds: float,
        served_at: str = "acme",
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.acme = acme
        self.domains = domains
        self.cert_path = cert_path
        self.key_path = key_path
        self.check_seconds = check_seconds
        self.served_at = served_at
        self.now = now
        self.failures = 0
        self.next_attempt: dt.datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, cert_path: Path, key_path: Path) -> RenewalLoop:
        config = AcmeConfig(
            directory_url=settings.tls_acme_directory,
            data_dir=settings.data_dir,
            email=settings.tls_acme_email,
            ca_bundle=settings.tls_acme_ca_bundle,
        )
        return cls(
            AcmeClient(config),
            settings.tls_acme_domains,
            cert_path,
            key_path,
            check_seconds=settings.tls_renew_check_seconds,
            served_at=f"web:{settings.web_port}",
        )

    def check_once(self) -> bool:
        """Renew the certificate if it is due and no backoff is pending; return whether it was."""
        now = self.now()
        if self.next_attempt is not None and now < self.next_attempt:
            return False
        try:
            if now < self._due():
                return False
            self.acme.issue(self.domains, self.cert_path, self.key_path)
        except TLSError as exc:
            self._record_failure(now, exc.message)
            return False
        self.failures = 0
        self.next_attempt = None
        STATUS.record_renewal(self.served_at, self.cert_path, None)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tls-renewal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self._seconds_to_next_check())

    def _seconds_to_next_check(self) -> float:
        if self.next_attempt is None:
            return self.check_seconds
        backoff = (self.next_attempt - self.now()).total_seconds()
        return max(1.0, min(self.check_seconds, backoff))

    def _due(self) -> dt.datetime:
        if not self.cert_path.exists():
            return dt.datetime.min.replace(tzinfo=dt.UTC)
        cert_pem = self.cert_path.read_bytes()
        cert = load_chain(self.cert_path)[0]
        ari_time = None if _from_internal_ca(cert) else self.acme.renewal_time(cert_pem)
        return renewal_due(cert, self.domains, ari_time)

    def _record_failure(self, now: dt.datetime, message: str) -> None:
        self.failures += 1
        delay = min(FIRST_RETRY * 2 ** (self.failures - 1), MAX_RETRY)
        self.next_attempt = now + delay
        STATUS.record_renewal(self.served_at, self.cert_path, message)
        log.error(
            "renewal of the certificate for %s failed (attempt %d, next in %.0f s): %s",
            ", ".join(self.domains),
            self.failures,
            delay.total_seconds(),
            message,
        )
