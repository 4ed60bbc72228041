import pytest
from django.test import override_settings

from loopline.platform import crypto


def test_round_trip_and_ciphertext_hides_plaintext():
    stored = crypto.encrypt("-----BEGIN PRIVATE KEY-----secret")
    assert stored.startswith("fernet:") and "secret" not in stored
    assert crypto.decrypt(stored) == "-----BEGIN PRIVATE KEY-----secret"


def test_wrong_key_gives_a_clear_error():
    stored = crypto.encrypt("x")
    with (
        override_settings(FIELD_ENCRYPTION_KEY="another passphrase"),
        pytest.raises(crypto.DecryptionError, match="changed since"),
    ):
        crypto.decrypt(stored)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("plain text")
