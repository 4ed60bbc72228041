"""Compact HMAC-signed tokens for email tracking URLs and visitor identification ([M6]).

A token is base64url(payload || mac) where payload packs (version, kind, bu, send, prospect, link, issued) and mac is
the first 16 bytes of HMAC-SHA256 over the payload, keyed from SECRET_KEY (fallback keys are accepted, so rotating the
secret does not break links already sent). Anything that does not verify is ``None`` to the caller, which answers 404.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.utils.encoding import force_bytes

VERSION = 1
_FORMAT = ">BcIQQII"  # version, kind, bu, send, prospect, link, issued (unix seconds)
_SIZE = struct.calcsize(_FORMAT)
_MAC = 16
_SALT = "loopline.tracking.token"
KINDS = {b"o": "open", b"c": "click", b"i": "identify"}
MAX_TOKEN_LENGTH = 120


@dataclass(frozen=True)
class Token:
    kind: str
    bu_id: int
    send_id: int
    prospect_id: int
    link_id: int
    issued: int


@lru_cache(maxsize=8)
def _key(secret: str | bytes) -> bytes:
    # salted_hmac's key derivation, once per secret: a send signs several links per recipient.
    return hashlib.sha256(force_bytes(_SALT) + force_bytes(secret)).digest()


def _mac(payload: bytes, secret: str | None = None) -> bytes:
    return hmac.new(_key(settings.SECRET_KEY if secret is None else secret), payload, hashlib.sha256).digest()[:_MAC]


def make(kind: str, *, bu_id: int, prospect_id: int, send_id: int = 0, link_id: int = 0,
         issued: int | None = None) -> str:
    code = {v: k for k, v in KINDS.items()}[kind]
    payload = struct.pack(_FORMAT, VERSION, code, bu_id, send_id, prospect_id, link_id,
                          int(time.time() if issued is None else issued))
    return base64.urlsafe_b64encode(payload + _mac(payload)).rstrip(b"=").decode()


def read(token: str, kind: str) -> Token | None:
    """The verified token, or None for anything forged, altered, truncated or of another kind."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != _SIZE + _MAC:
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        return None  # non-canonical spelling (e.g. altered padding bits): an altered token is a forged token
    payload, mac = raw[:_SIZE], raw[_SIZE:]
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    if not any(hmac.compare_digest(mac, _mac(payload, s)) for s in secrets):
        return None
    version, code, bu_id, send_id, prospect_id, link_id, issued = struct.unpack(_FORMAT, payload)
    if version != VERSION or KINDS.get(code) != kind:
        return None
    return Token(kind=kind, bu_id=bu_id, send_id=send_id, prospect_id=prospect_id, link_id=link_id, issued=issued)
