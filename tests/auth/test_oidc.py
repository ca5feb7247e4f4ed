"""ID-token validation with tokens signed by a test key."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from llmcloud.auth.login_errors import LoginFailed
from llmcloud.auth.oidc import validate_id_token

ISSUER = "http://127.0.0.1:9/realms/test"
CLIENT_ID = "llmcloud"
NONCE = "nonce-1234"
ALGORITHMS = ("RS256",)
KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
JWKS = {"keys": [KEY.as_dict(private=False)]}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
    }
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": "test-key"}, payload, key)


def validate(token: str) -> dict[str, Any]:
    return validate_id_token(
        token, jwks=JWKS, issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE, algorithms=ALGORITHMS
    )


def reason_of(token: str) -> str:
    with pytest.raises(LoginFailed) as caught:
        validate(token)
    assert caught.value.status_code == 401
    return caught.value.reason


def test_validate_id_token_accepts_valid_token() -> None:
    assert validate(sign(claims()))["sub"] == "user-1"


def test_validate_id_token_rejects_wrong_audience() -> None:
    assert reason_of(sign(claims(aud="another-client"))) == "id_token_wrong_audience"


def test_validate_id_token_rejects_foreign_authorized_party() -> None:
    token = sign(claims(aud=[CLIENT_ID, "another-client"], azp="another-client"))
    assert reason_of(token) == "id_token_wrong_audience"


def test_validate_id_token_rejects_wrong_issuer() -> None:
    assert reason_of(sign(claims(iss="http://127.0.0.1:9/realms/evil"))) == "id_token_wrong_issuer"


def test_validate_id_token_rejects_wrong_nonce() -> None:
    assert reason_of(sign(claims(nonce="replayed"))) == "id_token_wrong_nonce"


def test_validate_id_token_rejects_missing_nonce() -> None:
    assert reason_of(sign(claims(nonce=None))) == "id_token_wrong_nonce"


def test_validate_id_token_rejects_expired_token() -> None:
    past = int(time.time()) - 3600
    assert reason_of(sign(claims(iat=past - 300, exp=past))) == "id_token_expired"


def test_validate_id_token_rejects_other_key() -> None:
    assert reason_of(sign(claims(), key=OTHER_KEY)) == "id_token_bad_signature"


def test_validate_id_token_rejects_symmetric_algorithm() -> None:
    secret = OctKey.import_key("a-client-secret-used-as-a-signing-key")
    assert reason_of(sign(claims(), key=secret, alg="HS256")) == "id_token_invalid"


def test_validate_id_token_rejects_garbage() -> None:
    assert reason_of("not.a.token") == "id_token_invalid"
