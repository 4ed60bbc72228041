"""Encryption at rest for secrets (connector private keys, API credentials).

The key comes from ``LOOPLINE_FIELD_ENCRYPTION_KEY`` (a Fernet key, or any passphrase — it is stretched), falling back to
a key derived from ``SECRET_KEY``. Values are stored as ``fernet:<token>`` so a future key rotation can tell them apart.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

PREFIX = "fernet:"


class DecryptionError(Exception):
    pass


@cache
def _fernet(material: str) -> Fernet:
    try:
        return Fernet(material.encode())
    except ValueError:
        digest = hashlib.pbkdf2_hmac("sha256", material.encode(), b"loopline-field-encryption", 200_000)
        return Fernet(base64.urlsafe_b64encode(digest))


def _key_material() -> str:
    return settings.FIELD_ENCRYPTION_KEY or f"derived:{settings.SECRET_KEY}"


def encrypt(plaintext: str) -> str:
    return PREFIX + _fernet(_key_material()).encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise DecryptionError("Value is not encrypted with a known scheme")
    try:
        return _fernet(_key_material()).decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "Cannot decrypt a stored secret: LOOPLINE_FIELD_ENCRYPTION_KEY (or SECRET_KEY) changed since it was saved"
        ) from None
