"""The internal CA and the checks on certificate and key files."""

from __future__ import annotations

import datetime as dt
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from llmcloud.tls.ca import CAPaths, init_ca, issue_certificate
from llmcloud.tls.certificates import load_pair, subject_alt_names
from llmcloud.tls.errors import CertificateError


def test_init_ca_writes_key_with_mode_0600(ca: CAPaths) -> None:
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600


def test_init_ca_makes_secrets_folder_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_ca(data_dir, 3650)

    assert stat.S_IMODE((data_dir / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "certs").stat().st_mode) == 0o755


def test_init_ca_makes_ca_certificate(ca: CAPaths) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert constraints.path_length == 0


def test_init_ca_rejects_existing_ca(ca: CAPaths) -> None:
    with pytest.raises(CertificateError, match=r"already exists at .*ca\.pem; pass --replace"):
        init_ca(ca.data_dir, lifetime_days=30)


def test_issue_certificate_uses_p256_key_and_sans(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal", "10.0.0.5"], lifetime_days=10)
    public_key = pair.leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert subject_alt_names(pair.leaf) == ("chat.internal", "10.0.0.5")


def test_issue_certificate_lifetime_follows_setting(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=10)
    lifetime = pair.leaf.not_valid_after_utc - pair.leaf.not_valid_before_utc
    assert dt.timedelta(days=10) <= lifetime <= dt.timedelta(days=10, minutes=6)


def test_issue_certificate_key_mode_0600(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=10)
    assert stat.S_IMODE(pair.key_path.stat().st_mode) == 0o600


def test_issue_certificate_signed_by_ca(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=10)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    pair.leaf.verify_directly_issued_by(ca_cert)


def test_issue_certificate_requires_ca(data_dir: Path) -> None:
    with pytest.raises(CertificateError, match=r"no internal CA .* `llmcloud certs init-ca`"):
        issue_certificate(data_dir, "web", ["chat.internal"], lifetime_days=10)


def test_issue_certificate_rejects_bad_name(ca: CAPaths) -> None:
    with pytest.raises(CertificateError, match=r"invalid certificate name '\.\./web'"):
        issue_certificate(ca.data_dir, "../web", ["chat.internal"], lifetime_days=10)


def test_load_pair_rejects_mismatched_key(ca: CAPaths) -> None:
    first = issue_certificate(ca.data_dir, "first", ["a.internal"], lifetime_days=10)
    second = issue_certificate(ca.data_dir, "second", ["b.internal"], lifetime_days=10)
    with pytest.raises(CertificateError, match=f"key file {second.key_path} does not match"):
        load_pair(first.cert_path, second.key_path)


def test_load_pair_rejects_expired_certificate(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=10)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(CertificateError, match=f"certificate {pair.cert_path} expired on"):
        load_pair(pair.cert_path, pair.key_path, now=later)


def test_load_pair_rejects_future_certificate(ca: CAPaths) -> None:
    pair = issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=10)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(CertificateError, match=f"certificate {pair.cert_path} is not valid yet"):
        load_pair(pair.cert_path, pair.key_path, now=earlier)


def test_load_pair_reports_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(CertificateError, match=f"certificate file {missing} not found"):
        load_pair(missing, missing)


def test_load_pair_rejects_non_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(CertificateError, match=f"certificate file {junk} is not a PEM"):
        load_pair(junk, junk)


@pytest.mark.parametrize("san", ["bad host", "-leading.example", "a..b", "ex_ample.org", ""])
def test_issue_certificate_rejects_bad_san(ca: CAPaths, san: str) -> None:
    with pytest.raises(CertificateError, match=re.escape(f"invalid --san {san!r}")):
        issue_certificate(ca.data_dir, "web", ["ok.internal", san], lifetime_days=10)


@pytest.mark.parametrize("san", ["*.chat.internal", "10.0.0.5", "::1", "localhost"])
def test_issue_certificate_accepts_san(ca: CAPaths, san: str) -> None:
    pair = issue_certificate(ca.data_dir, "web", [san], lifetime_days=10)
    assert subject_alt_names(pair.leaf) == (san,)


def test_issue_certificate_rejects_zero_lifetime(ca: CAPaths) -> None:
    with pytest.raises(CertificateError, match="invalid lifetime 0 days; expected 1 or more"):
        issue_certificate(ca.data_dir, "web", ["chat.internal"], lifetime_days=0)
