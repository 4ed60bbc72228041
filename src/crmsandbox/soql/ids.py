"""Salesforce record ids: 15-char (case-sensitive) and 18-char (case-insensitive) forms."""

from __future__ import annotations

import re

_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?$")


def _suffix(id15: str) -> str:
    out = []
    for chunk_start in range(0, 15, 5):
        bits = 0
        for i, ch in enumerate(id15[chunk_start : chunk_start + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_SUFFIX_ALPHABET[bits])
    return "".join(out)


def to_18(record_id: str) -> str:
    """Return the 18-char form of a 15-char id (18-char ids are returned canonicalised)."""
    norm = normalize_id(record_id)
    if norm is None:
        raise ValueError(f"invalid id: {record_id!r}")
    return norm


def normalize_id(value: str) -> str | None:
    """Canonical 18-char id for a 15- or 18-char id, or None if ``value`` is not a well-formed id.

    A 15-char id is case-sensitive: its checksum suffix is computed. An 18-char id is case-insensitive:
    the case of its first 15 chars is restored from the suffix (so ``00q...`` still finds ``00Q...``).
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    if len(value) == 15:
        return value + _suffix(value)
    suffix = value[15:].upper()
    chars = list(value[:15])
    for chunk in range(3):
        bits = _SUFFIX_ALPHABET.index(suffix[chunk])
        for i in range(5):
            pos = chunk * 5 + i
            ch = chars[pos]
            if ch.isalpha():
                chars[pos] = ch.upper() if bits & (1 << i) else ch.lower()
            elif bits & (1 << i):
                return None  # the suffix says "uppercase letter" where there is a digit
    return "".join(chars) + suffix


def is_valid_id(value: str) -> bool:
    return normalize_id(value) is not None
