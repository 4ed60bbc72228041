"""Value normalisation, blankness and hashing — one place so comparison, resolution and echo checks agree.

``normalise(kind, value)`` gives a canonical, hashable value (or ``None`` for blank):

* text: surrounding whitespace stripped, line endings unified; ``""`` and :data:`~.model.NOT_PROVIDED` are blank;
* email: text, lower-cased;
* boolean: ``True``/``False`` from bools, ``"true"/"false"/"1"/"0"/"yes"/"no"``; ``None`` is blank (``False`` is not);
* integer/decimal: a normalised :class:`~decimal.Decimal` (``1``, ``1.0``, ``"1.00"`` are equal); ``0`` is not blank;
* date/datetime: ``date`` / UTC ``datetime``;
* id: the 18-character id, lower-cased.

Two values are "equal" when their normalised forms are equal; equal values never produce a write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from .model import (
    NOT_PROVIDED,
    FieldKind,
    FieldMapping,
    as_utc,
    coerce_decimal,
    format_datetime,
    id18,
    parse_datetime,
)

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def normalise(kind: FieldKind, value: Any) -> Any:
    """Canonical comparison form of ``value``; ``None`` means blank. Unparseable values compare as their text."""
    if value is None:
        return None
    if kind is FieldKind.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return None if text == "" else text
    if kind in (FieldKind.INTEGER, FieldKind.DECIMAL):
        if isinstance(value, str) and value.strip() == "":
            return None
        number = coerce_decimal(value)
        if number is None:
            return str(value).strip() or None
        number = number.normalize()
        return Decimal(0) if number.is_zero() else number
    if kind is FieldKind.DATE:
        if isinstance(value, datetime):
            return as_utc(value).date()
        if isinstance(value, date):
            return value
        text = str(value).strip()
        if not text:
            return None
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            return text
    if kind is FieldKind.DATETIME:
        if isinstance(value, str) and not value.strip():
            return None
        try:
            return parse_datetime(value)
        except (ValueError, TypeError):
            return str(value).strip() or None
    text = str(value).replace("\r\n", "\n").replace("\r", "\n").strip()
    if text == "" or text == NOT_PROVIDED:
        return None
    if kind is FieldKind.EMAIL:
        return text.lower()
    if kind is FieldKind.ID:
        return id18(text).lower()
    return text


def is_blank(kind: FieldKind, value: Any) -> bool:
    return normalise(kind, value) is None


def to_loopline_value(kind: FieldKind, value: Any) -> Any:
    """The value to store on the prospect (Django field types): text ``""`` for blank, ``Decimal``/``int``/``bool``/
    ``date``/``datetime`` for typed fields, ``None`` for a blank typed field."""
    norm = normalise(kind, value)
    if kind in (FieldKind.TEXT, FieldKind.EMAIL):
        return "" if norm is None else str(norm)
    if kind is FieldKind.ID:
        return "" if norm is None else str(value).strip()
    if kind is FieldKind.INTEGER and isinstance(norm, Decimal):
        return int(norm)
    return norm


def to_crm_value(kind: FieldKind, value: Any) -> Any:
    """A JSON-native value for the CRM: ``int`` for whole numbers, ``float`` when it round-trips exactly, else the
    decimal as a string (Salesforce accepts numeric strings); ``YYYY-MM-DD`` for dates, ISO ``Z`` for datetimes."""
    norm = normalise(kind, value)
    if norm is None:
        return None
    if kind in (FieldKind.INTEGER, FieldKind.DECIMAL) and isinstance(norm, Decimal):
        if norm == norm.to_integral_value():
            return int(norm)
        as_float = float(norm)
        return as_float if Decimal(repr(as_float)) == norm else str(norm)
    if kind is FieldKind.DATE and isinstance(norm, date):
        return norm.isoformat()
    if kind is FieldKind.DATETIME and isinstance(norm, datetime):
        return format_datetime(norm)
    if kind is FieldKind.ID:
        return str(value).strip()
    return norm


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, date):
        return {"D": value.isoformat()}
    return value


def values_hash(values: Mapping[str, Any], kinds: Mapping[str, FieldKind] | None = None) -> str:
    """A stable SHA-256 over normalised values (blank keys dropped), for echo suppression ([R24]).

    ``kinds`` gives each key's :class:`FieldKind` (text when missing), so ``1`` and ``"1.0"`` in a number field hash
    alike. Key order and blank entries do not matter.
    """
    kinds = kinds or {}
    canonical = {}
    for key in sorted(values):
        norm = normalise(kinds.get(key, FieldKind.TEXT), values[key])
        if norm is not None:
            canonical[key] = _jsonable(norm)
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def crm_kinds(mappings: Iterable[FieldMapping], object_type: str) -> dict[str, FieldKind]:
    """CRM field name → kind for the fields mapped on ``object_type``."""
    kinds: dict[str, FieldKind] = {}
    for m in mappings:
        name = m.crm_field(object_type)
        if name:
            kinds.setdefault(name, m.kind)
    return kinds


def crm_hash(values: Mapping[str, Any], mappings: Iterable[FieldMapping], object_type: str) -> str:
    """Hash of the *mapped* CRM fields of a record's values (what ``SyncState.last_*_hash`` store)."""
    kinds = crm_kinds(mappings, object_type)
    return values_hash({k: values.get(k) for k in kinds}, kinds)


def loopline_hash(values: Mapping[str, Any], mappings: Iterable[FieldMapping]) -> str:
    """Hash of the mapped Loopline fields of a prospect's values."""
    kinds = {m.loopline_field: m.kind for m in mappings}
    return values_hash({k: values.get(k) for k in kinds}, kinds)


def field_digest(kind: FieldKind, value: Any) -> str:
    """A short digest of one normalised value (``SyncState.baseline`` entries; JSON-friendly)."""
    norm = normalise(kind, value)
    payload = json.dumps(_jsonable(norm), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]
