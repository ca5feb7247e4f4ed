"""Reading, checking and writing certificate and key files.

A key is written to a temporary file with mode 0600 and renamed into place,
and a certificate the same way, so a reader never sees half a file. Before
a pair is served, `load_pair` checks that the key matches the first
certificate of the chain and that the certificate is inside its validity.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from llmcloud.tls.errors import CertificateError

ServerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertificateInfo:
    """The facts about one certificate that `llmcloud certs list` and monitoring show."""

    path: Path
    subject: str
    issuer: str
    sans: tuple[str, ...]
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or utcnow()
        return (self.not_after - now).total_seconds() / 86400


@dataclass(frozen=True)
class CertificatePair:
    """A validated certificate chain (leaf first) and its private key."""

    cert_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def info(self) -> CertificateInfo:
        return describe(self.leaf, self.cert_path)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """Generate an ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def load_chain(path: Path) -> tuple[x509.Certificate, ...]:
    """Read a PEM file of one or more certificates, leaf first."""
    data = _read(path, "certificate")
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise CertificateError(
            f"certificate file {path} is not a PEM certificate; expected "
            "'-----BEGIN CERTIFICATE-----' blocks"
        ) from None
    return chain


def load_key(path: Path) -> ServerKey:
    """Read an unencrypted PEM private key (EC or RSA)."""
    data = _read(path, "key")
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"key file {path} is not an unencrypted PEM private key ({exc}); "
            "expected a '-----BEGIN PRIVATE KEY-----' block without a passphrase"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(
            f"key file {path} contains a {type(key).__name__}; expected an EC or RSA key"
        )
    return key


def load_pair(cert_path: Path, key_path: Path, now: dt.datetime | None = None) -> CertificatePair:
    """Load a certificate chain and its key, and check that they can be served now."""
    chain = load_chain(cert_path)
    key = load_key(key_path)
    if not _same_public_key(chain[0], key):
        raise CertificateError(
            f"key file {key_path} does not match certificate {cert_path}; "
            "give the key that was generated with this certificate"
        )
    check_validity(chain[0], cert_path, now)
    return CertificatePair(cert_path=cert_path, key_path=key_path, chain=chain)


def check_validity(cert: x509.Certificate, path: Path, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"certificate {path} is not valid yet (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC); check the clock or the certificate"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "renew it or replace it"
        )


def describe(cert: x509.Certificate, path: Path) -> CertificateInfo:
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=subject_alt_names(cert),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names = extension.value.get_values_for_type(x509.DNSName)
    addresses = extension.value.get_values_for_type(x509.IPAddress)
    return (*names, *(str(address) for address in addresses))


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def general_name(host: str) -> x509.GeneralName:
    """Return an IPAddress name for an IP literal and a DNSName for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def key_pem(key: ServerKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def chain_pem(chain: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600, replacing any old one atomically.

    Folders that do not exist yet, such as the data dir's secrets/, are created with mode 0700.
    """
    _make_private_folders(path.parent)
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _make_private_folders(folder: Path) -> None:
    # Path.mkdir(parents=True) gives the parents the default mode, so each is made in turn.
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{kind} file {path} not found; check the path") from None
    except OSError as exc:
        raise CertificateError(f"cannot read {kind} file {path}: {exc.strerror}") from None


def _same_public_key(cert: x509.Certificate, key: ServerKey) -> bool:
    encoding = serialization.Encoding.DER
    form = serialization.PublicFormat.SubjectPublicKeyInfo
    cert_public = cert.public_key().public_bytes(encoding, form)
    return cert_public == key.public_key().public_bytes(encoding, form)
