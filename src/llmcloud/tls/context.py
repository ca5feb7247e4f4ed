"""TLS server contexts with hot reload of the certificate.

Every context allows TLS 1.2 and 1.3 only, with the TLS 1.2 cipher list of
Mozilla's "intermediate" configuration (ssl-config.mozilla.org): ECDHE or
DHE key exchange with AES-GCM or ChaCha20-Poly1305, all AEAD. The DHE
suites stay unused because no DH parameters are loaded. TLS 1.3's own
suites are AEAD by definition.

uvicorn takes one SSLContext at start, so `ReloadingCertificate` serves
through an outer context whose `sni_callback` hands each new handshake the
context built from the newest valid files. A poll thread watches the
files' modification times. When a changed pair fails to load (a key that
does not match, an expired certificate, a half-written file), the failure
is logged and the old pair stays in service. Connections already open keep
their session.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path

from llmcloud.tls.certificates import CertificatePair, load_pair
from llmcloud.tls.errors import CertificateError
from llmcloud.tls.status import STATUS

log = logging.getLogger("llmcloud.tls")

INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
DEFAULT_POLL_SECONDS = 5.0
# Files changed less than this long ago are left for the next poll, so that a pair
# written one file after the other is loaded once both are in place.
SETTLE_SECONDS = 1.0


def server_context(pair: CertificatePair) -> ssl.SSLContext:
    """Build a server context for a checked certificate pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(pair.cert_path, pair.key_path)
    return context


class ReloadingCertificate:
    """A server context that picks up a renewed or replaced certificate without a restart."""

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        served_at: str,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.served_at = served_at
        self.poll_seconds = poll_seconds
        self._signature = self._file_signature()
        self._current = self._build()
        self.context = self._build()
        self.context.sni_callback = self._select
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; return whether a new certificate is in use."""
        signature = self._file_signature()
        if signature == self._signature:
            return False
        newest_change_ns = max(mtime for mtime, _size, _inode in signature)
        if time.time_ns() - newest_change_ns < SETTLE_SECONDS * 1e9:
            # A writer may be between the key and the certificate; look again next poll.
            return False
        self._signature = signature
        try:
            self._current = self._build()
        except (CertificateError, ssl.SSLError, OSError) as exc:
            log.warning(
                "cannot load the changed certificate %s (%s); still serving the previous one",
                self.cert_path,
                exc,
            )
            return False
        log.info("now serving the new certificate %s at %s", self.cert_path, self.served_at)
        return True

    def start(self) -> ReloadingCertificate:
        self._thread = threading.Thread(target=self._poll, name="tls-reload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.reload_if_changed()

    def _select(self, connection: ssl.SSLObject, server_name: str | None, outer: object) -> None:
        connection.context = self._current

    def _build(self) -> ssl.SSLContext:
        pair = load_pair(self.cert_path, self.key_path)
        context = server_context(pair)
        STATUS.record_served(
            self.served_at, self.cert_path, pair.leaf.serial_number, pair.leaf.not_valid_after_utc
        )
        return context

    def _file_signature(self) -> tuple[tuple[int, int, int], ...]:
        signature = []
        for path in (self.cert_path, self.key_path):
            try:
                stat = os.stat(path)
            except OSError:
                signature.append((0, 0, 0))
                continue
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(signature)
