"""ARI (RFC 9773): a renewal window from the CA brings the renewal forward.

Pebble 2.4 (Debian 12) offers no renewalInfo resource, so a small loopback
HTTP server stands in for that one resource of the CA.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from acme import client, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from llmcloud.tls.acme_client import AcmeClient, AcmeConfig
from llmcloud.tls.certificates import generate_key
from llmcloud.tls.renewal import lifetime_due, renewal_due

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WINDOW_START = NOW - dt.timedelta(hours=2)
WINDOW_END = NOW - dt.timedelta(hours=1)


class RenewalInfoHandler(BaseHTTPRequestHandler):
    requested: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        RenewalInfoHandler.requested.append(self.path)
        window = {"start": WINDOW_START.isoformat(), "end": WINDOW_END.isoformat()}
        body = json.dumps({"suggestedWindow": window}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ari_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RenewalInfoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/renewal-info"
    server.shutdown()
    server.server_close()


def acme_certificate() -> x509.Certificate:
    """Return a 90-day certificate from a CA that is not the internal one, issued a day ago."""
    ca_key, key = generate_key(), generate_key()
    issuer = x509.Name.from_rfc4514_string("CN=Test ACME CA")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=chat.example.org"))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=89))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("chat.example.org")]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def client_with_ari(data_dir: Path, ari_url: str) -> AcmeClient:
    acme = AcmeClient(AcmeConfig("http://127.0.0.1:1/unused", data_dir))
    network = client.ClientNetwork(JWKEC(key=generate_key()), alg=ES256)
    network.session.trust_env = False
    directory = messages.Directory({"renewalInfo": ari_url})
    acme._client = client.ClientV2(directory, network)
    return acme


def test_renewal_time_inside_ari_window(data_dir: Path, ari_url: str) -> None:
    cert = acme_certificate()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    suggested = client_with_ari(data_dir, ari_url).renewal_time(pem)
    assert suggested is not None
    assert WINDOW_START <= suggested <= WINDOW_END
    assert RenewalInfoHandler.requested[-1].startswith("/renewal-info/")


def test_ari_window_brings_renewal_forward(data_dir: Path, ari_url: str) -> None:
    cert = acme_certificate()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    suggested = client_with_ari(data_dir, ari_url).renewal_time(pem)
    due = renewal_due(cert, ["chat.example.org"], suggested)
    assert due == suggested
    assert due < lifetime_due(cert)
    assert due < NOW
