"""A deliberately plain pure-Python SOQL evaluator used as a test oracle for the SQL compiler.

It shares only the parser and the schema with :mod:`.compiler`; every predicate, ordering and date rule is
re-implemented here from the Salesforce semantics, on Python values (dates and datetimes are parsed and
compared as objects, not as stored strings).

``tables`` maps a table name (``ObjectInfo.table``) to its rows in insertion (rowid) order; each row is a dict
``{field name: stored value}`` using the storage encoding (booleans 0/1, dates ``YYYY-MM-DD``, datetimes
``2024-01-05T10:20:30.000+0000``). Missing keys are null.

Case-insensitivity is ASCII-only, like SQLite's NOCASE and LIKE (a documented limitation of the sandbox).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any

from .ast import (
    And,
    Comparison,
    Condition,
    DateConstant,
    FieldPath,
    Includes,
    InList,
    Like,
    Literal,
    Not,
    Or,
    Query,
)
from .parser import parse
from .schema import FieldInfo, ObjectInfo, Schema

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TEXT = {
    "string",
    "email",
    "phone",
    "url",
    "textarea",
    "picklist",
    "multipicklist",
    "combobox",
    "encryptedstring",
}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def _fold(s: str) -> str:
    return s.translate(_ASCII_FOLD)


def _id18(id15: str) -> str:
    suffix = ""
    for start in (0, 5, 10):
        n = sum(1 << i for i, c in enumerate(id15[start : start + 5]) if c.isupper() and c.isascii())
        suffix += _ALPHABET[n]
    return id15 + suffix


@functools.lru_cache(maxsize=65536)
def _canonical_id(value: str) -> str:
    """15-char -> 18-char; an 18-char id in any case -> the case its suffix records."""
    if len(value) == 15:
        return _id18(value)
    head, suffix = value[:15], value[15:].upper()
    flags = [(_ALPHABET.index(ch) >> i) & 1 for ch in suffix for i in range(5)]
    return "".join(c.upper() if flag else c.lower() for c, flag in zip(head, flags, strict=True)) + suffix


def _parse_datetime(s: str) -> dt.datetime:
    # "2024-01-05T10:20:30.000+0000"
    return dt.datetime.fromisoformat(s)


class _Ref:
    def __init__(self, query: Query, schema: Schema, tables: dict[str, list[dict]], now: dt.datetime) -> None:
        self.q = query
        self.schema = schema
        self.tables = tables
        self.now = now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)
        obj = schema.object(query.object_name)
        assert obj is not None, "unknown object"
        self.obj: ObjectInfo = obj
        self._parent_index: dict[str, dict[str, dict]] = {}
        self._ranges: dict[DateConstant, tuple[dt.date, dt.date]] = {}
        self._lookups: dict[tuple[str, ...], tuple[FieldInfo, str | None, ObjectInfo | None]] = {}

    # -- field access -------------------------------------------------------------------------------------
    def lookup(self, path: FieldPath) -> tuple[FieldInfo, str | None, ObjectInfo | None]:
        """(field, relationship field name or None, parent object)."""
        found = self._lookups.get(path.parts)
        if found is None:
            found = self._lookups[path.parts] = self._lookup(path)
        return found

    def _lookup(self, path: FieldPath) -> tuple[FieldInfo, str | None, ObjectInfo | None]:
        parts = list(path.parts)
        own_prefix = len(parts) == 2 and parts[0].lower() == self.obj.name.lower()
        if own_prefix and not any(
            (f.relationship_name or "").lower() == parts[0].lower() for f in self.obj.fields.values()
        ):
            parts = parts[1:]
        if len(parts) == 1:
            return self.obj.fields[parts[0].lower()], None, None
        rel = next(
            f for f in self.obj.fields.values() if (f.relationship_name or "").lower() == parts[0].lower()
        )
        for name in rel.reference_to:
            parent = self.schema.object(name)
            if parent is not None and parts[1].lower() in parent.fields:
                return parent.fields[parts[1].lower()], rel.name, parent
        raise AssertionError("unknown parent field")

    def parent_row(self, row: dict, rel_field: str, parent: ObjectInfo) -> dict | None:
        index = self._parent_index.get(parent.table)
        if index is None:
            index = {r["Id"]: r for r in self.tables.get(parent.table, [])}
            self._parent_index[parent.table] = index
        fk = row.get(rel_field)
        return None if fk is None else index.get(fk)

    def raw(self, row: dict, path: FieldPath) -> tuple[Any, FieldInfo]:
        f, rel, parent = self.lookup(path)
        if rel is None:
            return row.get(f.name), f
        assert parent is not None
        prow = self.parent_row(row, rel, parent)
        return (None if prow is None else prow.get(f.name)), f

    @staticmethod
    def typed(value: Any, f: FieldInfo) -> Any:
        """Stored value -> a Python value that compares the Salesforce way."""
        if value is None:
            return None
        if f.type == "boolean":
            return bool(value)
        if f.type == "date":
            return dt.date.fromisoformat(value)
        if f.type == "datetime":
            return _parse_datetime(value)
        if f.type in _TEXT:
            return _fold(value)
        return value

    # -- literals -----------------------------------------------------------------------------------------
    def literal(self, lit: Literal, f: FieldInfo) -> Any:
        if lit.kind == "null":
            return None
        if f.type in ("id", "reference"):
            return None if lit.value == "" else _canonical_id(lit.value)  # type: ignore[arg-type]
        if lit.kind == "string":
            return _fold(lit.value)  # type: ignore[arg-type]
        return lit.value

    def day_range(self, const: DateConstant) -> tuple[dt.date, dt.date]:
        cached = self._ranges.get(const)
        if cached is None:
            cached = self._ranges[const] = self._day_range(const)
        return cached

    def _day_range(self, const: DateConstant) -> tuple[dt.date, dt.date]:
        today = self.now.date()
        n = const.n or 0
        d = dt.timedelta
        simple = {
            "TODAY": (today, today + d(1)),
            "YESTERDAY": (today - d(1), today),
            "TOMORROW": (today + d(1), today + d(2)),
            "LAST_N_DAYS": (today - d(n), today + d(1)),
            "NEXT_N_DAYS": (today + d(1), today + d(n + 1)),
            "N_DAYS_AGO": (today - d(n), today - d(n) + d(1)),
        }
        if const.name in simple:
            return simple[const.name]
        if const.name.endswith("MONTH"):
            y, m = today.year, today.month + {"THIS_MONTH": 0, "LAST_MONTH": -1, "NEXT_MONTH": 1}[const.name]
            if m == 0:
                y, m = y - 1, 12
            if m == 13:
                y, m = y + 1, 1
            start = dt.date(y, m, 1)
            end = dt.date(y + 1, 1, 1) if m == 12 else dt.date(y, m + 1, 1)
            return start, end
        y = today.year + {"THIS_YEAR": 0, "LAST_YEAR": -1, "NEXT_YEAR": 1}[const.name]
        return dt.date(y, 1, 1), dt.date(y + 1, 1, 1)

    # -- predicates ---------------------------------------------------------------------------------------
    @staticmethod
    def equal(value: Any, lit: Any, f: FieldInfo) -> bool:
        return value == lit

    def test(self, c: Condition, row: dict) -> bool:
        if isinstance(c, And):
            return all(self.test(i, row) for i in c.items)
        if isinstance(c, Or):
            return any(self.test(i, row) for i in c.items)
        if isinstance(c, Not):
            return not self.test(c.item, row)
        stored, f = self.raw(row, c.field)
        value = self.typed(stored, f)
        if isinstance(c, Like):
            if value is None:
                return False
            regex = ""
            chars = iter(c.pattern)
            for ch in chars:
                if ch == "\\":
                    regex += re.escape(next(chars))
                elif ch == "%":
                    regex += ".*"
                elif ch == "_":
                    regex += "."
                else:
                    regex += re.escape(ch)
            return re.fullmatch(regex, stored, re.IGNORECASE | re.ASCII | re.DOTALL) is not None
        if isinstance(c, Includes):
            held = set() if stored is None else {_fold(v) for v in stored.split(";")}
            hit = stored is not None and any(
                all(_fold(part.strip()) in held for part in str(lit.value).split(";") if part.strip())
                and any(part.strip() for part in str(lit.value).split(";"))
                for lit in c.values
            )
            return hit != c.negated
        if isinstance(c, InList):
            found = False
            for lit in c.values:
                lv = self.literal(lit, f)
                if (lv is None and value is None) or (
                    lv is not None and value is not None and self.equal(value, lv, f)
                ):
                    found = True
            return found != c.negated
        assert isinstance(c, Comparison)
        if c.value.kind == "date_constant":
            assert isinstance(c.value.value, DateConstant)
            start, end = self.day_range(c.value.value)
            if value is None:
                return c.op == "!="
            if f.type == "datetime":
                start = dt.datetime.combine(start, dt.time(), dt.UTC)  # type: ignore[assignment]
                end = dt.datetime.combine(end, dt.time(), dt.UTC)  # type: ignore[assignment]
            inside = start <= value < end
            return {
                "=": inside,
                "!=": not inside,
                "<": value < start,
                "<=": value < end,
                ">": value >= end,
                ">=": value >= start,
            }[c.op]
        lv = self.literal(c.value, f)
        if lv is None:
            return (value is None) == (c.op == "=")
        if value is None:
            return c.op == "!="
        if c.op == "=":
            return self.equal(value, lv, f)
        if c.op == "!=":
            return not self.equal(value, lv, f)
        if f.type == "datetime":
            lv = lv.astimezone(dt.UTC)
        return {
            "<": value < lv,
            "<=": value <= lv,
            ">": value > lv,
            ">=": value >= lv,
        }[c.op]

    # -- output -------------------------------------------------------------------------------------------
    @staticmethod
    def out_value(value: Any, f: FieldInfo) -> Any:
        if value is None:
            return None
        if f.type == "boolean":
            return value in (1, True)
        if f.type == "int":
            return int(value)
        if f.type in ("double", "currency", "percent"):
            return float(value)
        return value

    def record(self, row: dict, api_version: str) -> dict:
        base = f"/services/data/v{api_version}/sobjects"
        rec: dict[str, Any] = {
            "attributes": {"type": self.obj.name, "url": f"{base}/{self.obj.name}/{row['Id']}"}
        }
        for path in self.q.fields:
            f, rel, parent = self.lookup(path)
            if rel is None:
                rec[f.name] = self.out_value(row.get(f.name), f)
                continue
            assert parent is not None
            rel_field = self.obj.fields[rel.lower()]
            key = rel_field.relationship_name or path.parts[0]
            prow = self.parent_row(row, rel, parent)
            if prow is None:
                rec[key] = None
                continue
            nested = rec.get(key)
            if nested is None:
                nested = {"attributes": {"type": parent.name, "url": f"{base}/{parent.name}/{prow['Id']}"}}
                rec[key] = nested
            nested[f.name] = self.out_value(prow.get(f.name), f)
        return rec

    def run(self, include_deleted: bool, owner_id: str | None, api_version: str) -> list[dict]:
        rows = list(self.tables.get(self.obj.table, []))
        if not include_deleted:
            rows = [r for r in rows if not r.get("IsDeleted")]
        if owner_id is not None and self.obj.has_owner:
            oid = _canonical_id(owner_id)
            rows = [r for r in rows if r.get("OwnerId") == oid]
        if self.q.where is not None:
            rows = [r for r in rows if self.test(self.q.where, r)]
        for item in reversed(self.q.order_by):
            null_rank = 0 if item.nulls_first != item.descending else 2

            def key(r: dict, path: FieldPath = item.field, null_rank: int = null_rank) -> tuple:
                v = self.typed(*self.raw(r, path))
                return (null_rank,) if v is None else (1, v)

            rows.sort(key=key, reverse=item.descending)  # stable: ties keep insertion (rowid) order
        start = self.q.offset or 0
        stop = None if self.q.limit is None else start + self.q.limit
        rows = rows[start:stop]
        if self.q.is_count:
            return [{} for _ in rows]
        return [self.record(r, api_version) for r in rows]


def evaluate(
    query: str | Query,
    schema: Schema,
    tables: dict[str, list[dict]],
    *,
    include_deleted: bool = False,
    owner_id: str | None = None,
    now: dt.datetime | None = None,
    api_version: str = "59.0",
) -> list[dict]:
    """Run a query over in-memory rows; returns records shaped like ``CompiledQuery.row_to_record``
    (for ``COUNT()`` queries: one empty dict per counted row, so ``len()`` is the count)."""
    parsed = parse(query) if isinstance(query, str) else query
    ref = _Ref(parsed, schema, tables, now or dt.datetime.now(dt.UTC))
    return ref.run(include_deleted, owner_id, api_version)
