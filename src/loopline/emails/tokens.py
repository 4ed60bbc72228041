"""Signed tokens for unsubscribe / preference-center links and VERP bounce addresses.

Lower-case hex (survives case-folding mail systems in a VERP local part; at most 58 characters, within the 64 of
a local part) of (kind, bu, prospect, send) + an 8-byte HMAC-SHA256 keyed from SECRET_KEY (fallback keys accepted).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

_FORMAT = ">cIQQ"
_SIZE = struct.calcsize(_FORMAT)
_MAC = 8
_SALT = "loopline.emails.token"
KINDS = {"unsubscribe": b"u", "bounce": b"b", "confirm": b"c"}
MAX_LENGTH = 64


@dataclass(frozen=True)
class EmailToken:
    kind: str
    bu_id: int
    prospect_id: int
    send_id: int


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # Same derivation as django.utils.crypto.salted_hmac, computed once per secret (tokens are made per recipient).
    return hashlib.sha256((_SALT + secret).encode()).digest()


def _mac(payload: bytes, secret: str | None = None) -> bytes:
    return hmac.digest(_key(secret or settings.SECRET_KEY), payload, "sha256")[:_MAC]  # one-shot: no HMAC object


def make(kind: str, *, bu_id: int, prospect_id: int, send_id: int = 0) -> str:
    payload = struct.pack(_FORMAT, KINDS[kind], bu_id, prospect_id, send_id)
    return (payload + _mac(payload)).hex()


def read(token: str, kind: str) -> EmailToken | None:
    """The verified token, or None for anything forged, altered or of another kind."""
    if not token or len(token) > MAX_LENGTH or not token.isascii():
        return None
    if token != token.lower():
        return None
    try:
        raw = binascii.unhexlify(token)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _SIZE + _MAC:
        return None
    payload, mac = raw[:_SIZE], raw[_SIZE:]
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    if not any(hmac.compare_digest(mac, _mac(payload, s)) for s in secrets):
        return None
    code, bu_id, prospect_id, send_id = struct.unpack(_FORMAT, payload)
    if code != KINDS.get(kind):
        return None
    return EmailToken(kind=kind, bu_id=bu_id, prospect_id=prospect_id, send_id=send_id)
