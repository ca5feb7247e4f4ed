"""Certificates from an ACME CA (RFC 8555): account, order, HTTP-01, finalisation, storage.

The account key (ECDSA P-256) lives in `<data_dir>/secrets/acme-account.pem`
and is registered once per CA. Each order gets a fresh certificate key. The
HTTP-01 key authorizations go through `ChallengeStore`, which the web app serves at
/.well-known/acme-challenge/. Every failure becomes an `AcmeError` that names
the domain and the CA's own error text. The HTTP session ignores proxy
environment variables, so it talks to the configured directory only.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import requests
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from llmcloud import __version__
from llmcloud.tls.certificates import (
    chain_pem,
    generate_key,
    key_pem,
    load_key,
    load_pair,
    write_private,
    write_public,
)
from llmcloud.tls.challenges import ChallengeStore
from llmcloud.tls.errors import AcmeError

log = logging.getLogger("llmcloud.tls")

ORDER_TIMEOUT_SECONDS = 90.0
NETWORK_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class AcmeConfig:
    """Settings of an ACME client: the CA, the contact email and the data dir."""

    directory_url: str
    data_dir: Path
    email: str | None = None
    ca_bundle: Path | None = None

    @property
    def account_key_path(self) -> Path:
        return self.data_dir / "secrets" / "acme-account.pem"


class AcmeClient:
    """A registered ACME account that orders certificates for domains."""

    def __init__(self, config: AcmeConfig) -> None:
        self.config = config
        self.challenges = ChallengeStore(config.data_dir)
        self._client: client.ClientV2 | None = None

    def issue(self, domains: list[str], cert_path: Path, key_path: Path) -> x509.Certificate:
        """Order a certificate for `domains` through HTTP-01, and store the chain and key."""
        acme = self._connect(domains)
        key = generate_key()
        csr = crypto_util.make_csr(key_pem(key), domains)
        try:
            order = acme.new_order(csr)
            tokens = self._answer_challenges(acme, order, domains)
            deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_TIMEOUT_SECONDS)
            try:
                order = acme.poll_and_finalize(order, deadline)
            finally:
                for token in tokens:
                    self.challenges.remove(token)
        except acme_errors.ValidationError as exc:
            raise AcmeError(_validation_message(domains, exc)) from None
        except (acme_errors.Error, messages.Error, requests.RequestException) as exc:
            raise AcmeError(_error_message(domains, self.config.directory_url, exc)) from None
        chain = x509.load_pem_x509_certificates(order.fullchain_pem.encode("ascii"))
        write_private(key_path, key_pem(key))
        write_public(cert_path, chain_pem(chain))
        load_pair(cert_path, key_path)
        log.info(
            "ACME CA issued a certificate for %s (serial %x)",
            ", ".join(domains),
            chain[0].serial_number,
        )
        return chain[0]

    def renewal_time(self, cert_pem: bytes) -> dt.datetime | None:
        """Return the CA's suggested renewal time (ARI), or None when it offers none."""
        acme = self._connect([])
        try:
            suggested, _next_check = acme.renewal_time(cert_pem)
        except acme_errors.ARIError as exc:
            log.warning("cannot fetch the ARI renewal window (%s); using the lifetime rule", exc)
            return None
        if suggested is not None and suggested.tzinfo is None:
            suggested = suggested.replace(tzinfo=dt.UTC)
        return suggested

    def _connect(self, domains: list[str]) -> client.ClientV2:
        if self._client is not None:
            return self._client
        account_key = JWKEC(key=self._account_key())
        network = client.ClientNetwork(
            account_key,
            alg=ES256,
            user_agent=f"llmcloud/{__version__}",
            timeout=NETWORK_TIMEOUT_SECONDS,
        )
        network.session.trust_env = False
        if self.config.ca_bundle is not None:
            network.verify_ssl = str(self.config.ca_bundle)  # type: ignore[assignment]
        try:
            directory = client.ClientV2.get_directory(self.config.directory_url, network)
            acme = client.ClientV2(directory, network)
            self._register(acme)
        except (acme_errors.Error, messages.Error, requests.RequestException) as exc:
            raise AcmeError(_error_message(domains, self.config.directory_url, exc)) from None
        self._client = acme
        return acme

    def _register(self, acme: client.ClientV2) -> None:
        contact = (f"mailto:{self.config.email}",) if self.config.email else ()
        registration = messages.NewRegistration.from_data(terms_of_service_agreed=True)
        if contact:
            registration = registration.update(contact=contact)
        try:
            acme.new_account(registration)
            log.info("registered an ACME account at %s", self.config.directory_url)
        except acme_errors.ConflictError as exc:
            existing = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            acme.net.account = acme.query_registration(existing)

    def _account_key(self) -> object:
        path = self.config.account_key_path
        if path.exists():
            return load_key(path)
        key = generate_key()
        write_private(path, key_pem(key))
        return key

    def _answer_challenges(
        self, acme: client.ClientV2, order: messages.OrderResource, domains: list[str]
    ) -> list[str]:
        tokens = []
        for authorization in order.authorizations:
            # A CA may reuse an authorization that an earlier order validated.
            if authorization.body.status == messages.STATUS_VALID:
                continue
            domain = authorization.body.identifier.value
            challenge = _http01(authorization, domain)
            response, validation = challenge.response_and_validation(acme.net.key)
            token = challenge.chall.encode("token")
            self.challenges.put(token, validation)
            tokens.append(token)
            acme.answer_challenge(challenge, response)
        return tokens


def _http01(authorization: messages.AuthorizationResource, domain: str) -> messages.ChallengeBody:
    for challenge in authorization.body.challenges:
        if isinstance(challenge.chall, challenges.HTTP01):
            return challenge
    offered = ", ".join(str(c.chall.typ) for c in authorization.body.challenges)
    raise AcmeError(
        f"the ACME CA offers no http-01 challenge for {domain} (offered: {offered}); "
        "llmcloud answers http-01 only"
    )


def _validation_message(domains: list[str], exc: acme_errors.ValidationError) -> str:
    details = []
    for authorization in exc.failed_authzrs:
        domain = authorization.body.identifier.value
        for challenge in authorization.body.challenges:
            if challenge.error is not None:
                details.append(f"{domain}: {challenge.error.detail or challenge.error.typ}")
    return (
        "the ACME CA could not validate the http-01 challenge for "
        f"{', '.join(domains)} ({'; '.join(details) or 'no detail'}); check that port 80 of "
        "each domain reaches this server's /.well-known/acme-challenge/"
    )


def _error_message(domains: list[str], directory: str, exc: Exception) -> str:
    target = f"for {', '.join(domains)} " if domains else ""
    return f"ACME request {target}to {directory} failed: {exc}"
