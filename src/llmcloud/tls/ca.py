"""The internal certificate authority for private networks.

`init_ca` creates an ECDSA P-256 CA key in `<data_dir>/secrets/` (mode
0600) and a self-signed CA certificate in `<data_dir>/certs/ca.pem`, which
browsers and clients import to trust the server certificates that
`issue_certificate` signs. The CA is constrained to path length 0, so it
signs only leaf certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmcloud.tls.certificates import (
    CertificatePair,
    chain_pem,
    general_name,
    generate_key,
    key_pem,
    load_chain,
    load_key,
    load_pair,
    utcnow,
    write_private,
    write_public,
)
from llmcloud.tls.errors import CertificateError

log = logging.getLogger("llmcloud.tls")

CA_NAME = "llmcloud internal CA"
# Clocks of clients may run a little behind the CA's.
BACKDATE = dt.timedelta(minutes=5)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A DNS name of letters, digits and hyphens per label, optionally starting with "*.".
HOST_PATTERN = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True)
class CAPaths:
    """Paths of the internal CA and of the certificates it issues, inside a data dir."""

    data_dir: Path

    @property
    def cert(self) -> Path:
        return self.data_dir / "certs" / "ca.pem"

    @property
    def key(self) -> Path:
        return self.data_dir / "secrets" / "ca-key.pem"

    def issued_cert(self, name: str) -> Path:
        return self.data_dir / "certs" / f"{name}.pem"

    def issued_key(self, name: str) -> Path:
        return self.data_dir / "secrets" / f"{name}-key.pem"


def init_ca(data_dir: Path, lifetime_days: int, *, replace: bool = False) -> Path:
    """Create the CA key and certificate; return the certificate's path."""
    paths = CAPaths(data_dir)
    if paths.cert.exists() and not replace:
        raise CertificateError(
            f"an internal CA already exists at {paths.cert}; pass --replace to create a new one "
            "(certificates it issued stop being trusted)"
        )
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = utcnow()
    builder = (
        _base_builder(name, key.public_key(), now, lifetime_days)
        .issuer_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = builder.sign(key, hashes.SHA256())
    write_private(paths.key, key_pem(key))
    write_public(paths.cert, chain_pem([cert]))
    log.info("created the internal CA %s (valid %d days)", paths.cert, lifetime_days)
    return paths.cert


def issue_certificate(
    data_dir: Path, name: str, sans: list[str], lifetime_days: int
) -> CertificatePair:
    """Issue a server certificate for `sans` signed by the internal CA, stored under `name`."""
    if not NAME_PATTERN.match(name):
        raise CertificateError(
            f"invalid certificate name {name!r}; expected letters, digits, '.', '_' or '-'"
        )
    if not sans:
        raise CertificateError(f"certificate {name!r} needs at least one --san host name or IP")
    for host in sans:
        _check_san(host)
    if lifetime_days < 1:
        raise CertificateError(f"invalid lifetime {lifetime_days} days; expected 1 or more")
    paths = CAPaths(data_dir)
    if not paths.cert.exists():
        raise CertificateError(
            f"no internal CA at {paths.cert}; create one with `llmcloud certs init-ca`"
        )
    ca_cert = load_chain(paths.cert)[0]
    ca_key = load_key(paths.key)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"CA key {paths.key} is not an EC key; recreate the CA")

    key = generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])])
    builder = (
        _base_builder(subject, key.public_key(), utcnow(), lifetime_days)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([general_name(h) for h in sans]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(paths.issued_key(name), key_pem(key))
    write_public(paths.issued_cert(name), chain_pem([cert]))
    log.info("issued certificate %s for %s (valid %d days)", name, ", ".join(sans), lifetime_days)
    return load_pair(paths.issued_cert(name), paths.issued_key(name))


def _check_san(host: str) -> None:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return
    except ValueError:
        pass
    if len(host) > 253 or not HOST_PATTERN.match(host):
        raise CertificateError(
            f"invalid --san {host!r}; expected a host name such as chat.internal or an IP address"
        )


def _base_builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
