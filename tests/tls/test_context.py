"""The reloading server context, without a server: settling, status, TLS settings."""

from __future__ import annotations

import ssl
import time

from llmcloud.tls.ca import CAPaths, issue_certificate
from llmcloud.tls.context import SETTLE_SECONDS, ReloadingCertificate
from llmcloud.tls.status import STATUS


def reloading(ca: CAPaths) -> tuple[ReloadingCertificate, int]:
    pair = issue_certificate(ca.data_dir, "web", ["localhost"], lifetime_days=30)
    certificate = ReloadingCertificate(pair.cert_path, pair.key_path, served_at="unit")
    return certificate, pair.leaf.serial_number


def served_serial() -> int:
    entry = next(entry for entry in STATUS.snapshot() if entry.served_at == "unit")
    return entry.serial


def test_reload_waits_for_files_to_settle(ca: CAPaths) -> None:
    certificate, _ = reloading(ca)
    issue_certificate(ca.data_dir, "web", ["localhost"], lifetime_days=30)
    assert certificate.reload_if_changed() is False
    time.sleep(SETTLE_SECONDS + 0.1)
    assert certificate.reload_if_changed() is True


def test_reload_records_new_serial(ca: CAPaths) -> None:
    certificate, old_serial = reloading(ca)
    renewed = issue_certificate(ca.data_dir, "web", ["localhost"], lifetime_days=30)
    time.sleep(SETTLE_SECONDS + 0.1)
    certificate.reload_if_changed()
    assert served_serial() == renewed.leaf.serial_number
    assert served_serial() != old_serial


def test_reload_skips_unchanged_files(ca: CAPaths) -> None:
    certificate, _ = reloading(ca)
    time.sleep(SETTLE_SECONDS + 0.1)
    assert certificate.reload_if_changed() is False


def test_context_allows_only_tls_1_2_and_1_3(ca: CAPaths) -> None:
    certificate, _ = reloading(ca)
    assert certificate.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert certificate.context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_context_offers_only_aead_ciphers(ca: CAPaths) -> None:
    certificate, _ = reloading(ca)
    for cipher in certificate.context.get_ciphers():
        assert cipher["aead"], cipher["name"]
