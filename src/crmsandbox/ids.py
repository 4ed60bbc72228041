"""Salesforce record ids: generation, 15→18 checksum, validation.

An id is a 3-char key prefix + 12 base62 chars (15 chars, case-sensitive) + a 3-char checksum suffix
that encodes the case of the first 15 characters (18 chars, case-insensitive).
"""

from __future__ import annotations

import re

from .soql.ids import normalize_id

_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?$")


_CHUNK_CHARS: dict[str, str] = {}  # 5-char chunk -> its checksum character (memo: ids share most chunks)


def _chunk_char(chunk: str) -> str:
    c = _CHUNK_CHARS.get(chunk)
    if c is None:
        bits = 0
        for i, ch in enumerate(chunk):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        c = _SUFFIX_ALPHABET[bits]
        if len(_CHUNK_CHARS) < 1_000_000:
            _CHUNK_CHARS[chunk] = c
    return c


def checksum(id15: str) -> str:
    """The 3-character case-checksum suffix for a 15-character id."""
    return _chunk_char(id15[0:5]) + _chunk_char(id15[5:10]) + _chunk_char(id15[10:15])


def to18(id15: str) -> str:
    return id15 + checksum(id15)


def make_id(prefix: str, n: int) -> str:
    """The 18-char id number ``n`` (≥ 0) for a key prefix (deterministic, sortable per prefix)."""
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(_BASE62[r])
    body = "".join(reversed(digits)).rjust(12, "0")
    if len(body) > 12:
        raise ValueError("id space exhausted")
    return to18(prefix + body)


_LOW2 = [_BASE62[i // 62] + _BASE62[i % 62] for i in range(62 * 62)]
_LOW2_BITS = [(1 if "A" <= x[0] <= "Z" else 0) | (2 if "A" <= x[1] <= "Z" else 0) for x in _LOW2]


def make_ids(prefix: str, first: int, count: int) -> list[str]:
    """``[make_id(prefix, n) for n in range(first, first + count)]``, fast: the first 13 characters change only
    every 3,844 ids, so their part of the checksum is computed once per block."""
    out: list[str] = []
    n = first
    end = first + count
    while n < end:
        high, low = divmod(n, 62 * 62)
        head = make_id(prefix, high * 62 * 62)[:13]  # prefix + 10 body chars
        c1 = _chunk_char(head[0:5])
        c2 = _chunk_char(head[5:10])
        hb = 0
        for i, ch in enumerate(head[10:13]):
            if "A" <= ch <= "Z":
                hb |= 1 << i
        stop = min(end - n + low, 62 * 62)
        out.extend(head + _LOW2[k] + c1 + c2 + _SUFFIX_ALPHABET[hb | (_LOW2_BITS[k] << 3)]
                   for k in range(low, stop))
        n += stop - low
    return out


def normalize(value: object) -> str | None:
    """Return the canonical 18-char id for a 15- or 18-char id, or None when malformed.

    An 18-char id is case-insensitive: its suffix restores the case of the first 15 characters.
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    if len(value) == 18 and checksum(value[:15]) == value[15:]:
        return value  # already canonical (the common case), with the memoised checksum
    return normalize_id(value)


def prefix_of(record_id: str) -> str:
    return record_id[:3]
