from __future__ import annotations

import logging

import pytest
from argon2 import PasswordHasher

from llmcloud.auth.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from llmcloud.db.errors import InvalidInput


def test_policy_accepts_eight_characters() -> None:
    check_password_policy("8 chars!")


def test_policy_rejects_short_password() -> None:
    with pytest.raises(InvalidInput) as error:
        check_password_policy("hunter2")
    assert error.value.message == "password is too short: 7 characters, expected at least 8"


def test_policy_rejects_long_password() -> None:
    with pytest.raises(InvalidInput, match="too long: 1025 characters, expected at most 1024"):
        check_password_policy("x" * 1025)


def test_policy_rejects_username_as_password() -> None:
    with pytest.raises(InvalidInput, match="must differ from the username"):
        check_password_policy("Margaret", username="margaret")


def test_policy_message_never_contains_password() -> None:
    with pytest.raises(InvalidInput) as error:
        check_password_policy("s3cr3t")
    assert "s3cr3t" not in error.value.message


def test_verify_password_accepts_right_password(hasher: PasswordHasher) -> None:
    stored = hash_password("correct horse", hasher)
    assert verify_password(stored, "correct horse", hasher)


def test_verify_password_rejects_wrong_password(hasher: PasswordHasher) -> None:
    stored = hash_password("correct horse", hasher)
    assert not verify_password(stored, "battery staple", hasher)


def test_verify_password_treats_garbage_hash_as_mismatch(
    hasher: PasswordHasher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmcloud.auth")
    assert not verify_password("plain-text-password", "plain-text-password", hasher)
    assert caplog.records[0].name == "llmcloud.auth"
    assert "cannot be verified" in caplog.records[0].getMessage()


def test_needs_rehash_detects_other_parameters(hasher: PasswordHasher) -> None:
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    stored = hash_password("correct horse", hasher)
    assert needs_rehash(stored, stronger)
    assert not needs_rehash(stored, hasher)
