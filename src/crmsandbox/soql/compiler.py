"""Compile a parsed SOQL query into SQLite SQL over the crmsandbox storage layout.

Storage layout (see the package docstring): one rowid table per object (``ObjectInfo.table``), one column per
field named exactly ``FieldInfo.name``, ``Id`` TEXT 18-char primary key, ``IsDeleted`` INTEGER 0/1.

Predicates follow SOQL's two-valued logic: ``Email != 'x'`` and ``Email NOT IN ('x')`` match rows whose Email is
null, ``NOT (Email = 'x')`` too, while ``=``, ``<``, ``LIKE``... never match null (except ``= null``).
The compiler rewrites the WHERE tree into negation normal form, so every emitted predicate is a plain, indexable
column comparison (``"t0"."SystemModstamp" > ?``) — no function calls on columns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from .errors import SoqlError, located_error
from .ids import normalize_id
from .parser import parse
from .schema import ID_TYPES, INTEGER_TYPES, NUMBER_TYPES, STRING_TYPES, FieldInfo, ObjectInfo, Schema

MAIN = "t0"

_INVALID_FIELD_TAIL = (
    "If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
_INVALID_REL_TAIL = (
    "If you are attempting to use a custom relationship, be sure to append the '__r' after the custom "
    "relationship name. Please reference your WSDL or the describe call for the appropriate names."
)
_INVALID_TYPE_TAIL = (
    "If you are attempting to use a custom object, be sure to append the '__c' after the entity name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)

_COMPLEMENT = {"=": "!=", "!=": "=", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def q(identifier: str) -> str:
    """Double-quote an SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def format_datetime(value: dt.datetime) -> str:
    """Stored/wire form of a datetime: ``2024-01-05T10:20:30.000+0000`` (UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}+0000"


def date_constant_range(const: DateConstant, now: dt.datetime) -> tuple[dt.date, dt.date]:
    """Half-open day range ``[start, end)`` of a date constant, computed from ``now`` (UTC)."""
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC)
    today = now.date()
    one = dt.timedelta(days=1)
    name, n = const.name, const.n or 0
    if name == "TODAY":
        return today, today + one
    if name == "YESTERDAY":
        return today - one, today
    if name == "TOMORROW":
        return today + one, today + 2 * one
    if name == "LAST_N_DAYS":
        return today - n * one, today + one
    if name == "NEXT_N_DAYS":
        return today + one, today + (n + 1) * one
    if name == "N_DAYS_AGO":
        return today - n * one, today - (n - 1) * one
    if name.endswith("_MONTH"):
        shift = {"THIS_MONTH": 0, "LAST_MONTH": -1, "NEXT_MONTH": 1}[name]
        index = today.year * 12 + today.month - 1 + shift
        start = dt.date(index // 12, index % 12 + 1, 1)
        end = dt.date((index + 1) // 12, (index + 1) % 12 + 1, 1)
        return start, end
    if name.endswith("_YEAR"):
        shift = {"THIS_YEAR": 0, "LAST_YEAR": -1, "NEXT_YEAR": 1}[name]
        return dt.date(today.year + shift, 1, 1), dt.date(today.year + shift + 1, 1, 1)
    raise SoqlError("MALFORMED_QUERY", f"unsupported date literal {name}")


@dataclass
class _Join:
    alias: str
    relationship: str  # canonical relationship name, e.g. "Owner"
    fk: FieldInfo  # the reference field on the main object, e.g. OwnerId
    parent: ObjectInfo


@dataclass
class _Resolved:
    field: FieldInfo
    sql: str
    join: _Join | None


@dataclass
class _OutField:
    name: str
    column: int
    field: FieldInfo


@dataclass
class _OutParent:
    name: str  # relationship name, canonical
    parent: ObjectInfo
    id_column: int
    fields: list[_OutField] = field(default_factory=list)


def _convert(value: Any, f: FieldInfo) -> Any:
    if value is None:
        return None
    t = f.type
    if t == "boolean":
        return bool(value)
    if t in INTEGER_TYPES:
        return int(value)
    if t in NUMBER_TYPES:
        return float(value)
    return value


@dataclass
class CompiledQuery:
    """The SQL for a query plus the row → JSON record mapping.

    ``select_sql``/``params``: rows in SOQL order (ORDER BY keys, then ``rowid``), SOQL LIMIT/OFFSET applied.
    ``count_sql``/``count_params``: one row, one column: the number of records the query returns (``totalSize``).
    For ``SELECT COUNT()`` queries (``is_count``) ``records`` is empty and ``totalSize`` comes from ``count_sql``.
    Each select row also carries hidden trailing columns (sort keys, rowid) used by :meth:`page_sql`.
    """

    object: ObjectInfo
    is_count: bool
    select_sql: str
    params: list
    count_sql: str
    count_params: list
    api_version: str = "59.0"
    limit: int | None = None
    offset: int | None = None
    params_where: list = field(default_factory=list, repr=False)  # params of the WHERE clause alone
    _outputs: list[_OutField | _OutParent] = field(default_factory=list, repr=False)
    _base_sql: str = field(default="", repr=False)  # SELECT ... FROM ... WHERE <where>  (no ORDER/LIMIT)
    _order_sql: str = field(default="", repr=False)
    _has_where: bool = field(default=False, repr=False)
    _seek: Callable[[Sequence[Any]], tuple[str, list]] | None = field(default=None, repr=False)
    _key_start: int = field(default=0, repr=False)

    def _url(self, type_name: str, record_id: Any) -> str:
        return f"/services/data/v{self.api_version}/sobjects/{type_name}/{record_id}"

    def row_to_record(self, row: Sequence[Any]) -> dict:
        """The JSON record Salesforce returns for one result row."""
        record: dict[str, Any] = {
            "attributes": {"type": self.object.name, "url": self._url(self.object.name, row[0])}
        }
        for out in self._outputs:
            if isinstance(out, _OutField):
                record[out.name] = _convert(row[out.column], out.field)
            else:
                parent_id = row[out.id_column]
                if parent_id is None:
                    record[out.name] = None
                    continue
                nested: dict[str, Any] = {
                    "attributes": {"type": out.parent.name, "url": self._url(out.parent.name, parent_id)}
                }
                for pf in out.fields:
                    nested[pf.name] = _convert(row[pf.column], pf.field)
                record[out.name] = nested
        return record

    def sort_key(self, row: Sequence[Any]) -> tuple:
        """The row's position in the result order (its ORDER BY key values and rowid): pass the key of the last
        row of a page to :meth:`page_sql` to fetch the next page by keyset instead of OFFSET."""
        return tuple(row[self._key_start :])

    def page_sql(
        self, *, after: Sequence[Any] | None, page_size: int, already_returned: int = 0
    ) -> tuple[str, list]:
        """SQL + params for the next page of at most ``page_size`` rows.

        ``after`` is :meth:`sort_key` of the last row already returned (``None`` for the first page) and
        ``already_returned`` how many rows were returned so far; the SOQL LIMIT/OFFSET are honoured.
        Keyset paging stays fast at any depth when an index matches the ORDER BY.
        """
        remaining = page_size
        if self.limit is not None:
            remaining = max(0, min(page_size, self.limit - already_returned))
        if after is None:
            offset = self.offset or 0
            return f"{self._base_sql} {self._order_sql} LIMIT {remaining} OFFSET {offset}", list(
                self.params_where
            )
        assert self._seek is not None
        seek_sql, seek_params = self._seek(after)
        joiner = " AND " if self._has_where else " WHERE "
        sql = f"{self._base_sql}{joiner}{seek_sql} {self._order_sql} LIMIT {remaining}"
        return sql, [*self.params_where, *seek_params]


class _Compiler:
    def __init__(
        self,
        query: Query,
        schema: Schema,
        *,
        include_deleted: bool,
        owner_id: str | None,
        api_version: str,
        now: dt.datetime | None,
    ) -> None:
        self.query = query
        self.schema = schema
        self.include_deleted = include_deleted
        self.owner_id = owner_id
        self.api_version = api_version
        self.now = now or dt.datetime.now(dt.UTC)
        obj = schema.object(query.object_name)
        if obj is None:
            raise located_error(
                "INVALID_TYPE",
                f"sObject type '{query.object_name}' is not supported. {_INVALID_TYPE_TAIL}",
                query.text,
                query.object_pos,
            )
        self.obj = obj
        self.joins: dict[str, _Join] = {}

    # -- errors -------------------------------------------------------------------------------------------
    def error(self, code: str, detail: str, pos: int) -> SoqlError:
        return located_error(code, detail, self.query.text, pos)

    def no_such_column(self, name: str, obj: ObjectInfo, pos: int) -> SoqlError:
        return self.error(
            "INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'. {_INVALID_FIELD_TAIL}", pos
        )

    # -- fields -------------------------------------------------------------------------------------------
    def resolve(self, path: FieldPath) -> _Resolved:
        parts = path.parts
        if (
            len(parts) == 2
            and parts[0].lower() == self.obj.name.lower()
            and self.obj.relationship(parts[0]) is None
        ):
            parts = parts[1:]  # "Lead.Email" in a query on Lead
        if len(parts) == 1:
            f = self.obj.fields.get(parts[0].lower())
            if f is None:
                raise self.no_such_column(parts[0], self.obj, path.pos)
            return _Resolved(f, f"{q(MAIN)}.{q(f.name)}", None)
        rel = self.obj.relationship(parts[0])
        if rel is None or len(parts) > 2:
            bad = parts[0] if rel is None else parts[1]
            hint = "" if rel is None else " (crmsandbox supports one level of parent relationship)"
            raise self.error(
                "INVALID_FIELD",
                f"Didn't understand relationship '{bad}' in field path. {_INVALID_REL_TAIL}{hint}",
                path.pos,
            )
        join = self.joins.get(rel.name.lower())
        if join is None:
            first: ObjectInfo | None = None
            parent: ObjectInfo | None = None
            for type_name in rel.reference_to:
                candidate = self.schema.object(type_name)
                if candidate is None:
                    continue
                first = first or candidate
                if parts[1].lower() in candidate.fields:
                    parent = candidate
                    break
            if parent is None:
                if first is None:
                    raise self.error(
                        "INVALID_FIELD",
                        f"Didn't understand relationship '{parts[0]}' in field path. {_INVALID_REL_TAIL}",
                        path.pos,
                    )
                raise self.no_such_column(parts[1], first, path.pos)
            join = _Join(f"p{len(self.joins) + 1}", rel.relationship_name or parts[0], rel, parent)
            self.joins[rel.name.lower()] = join
        pf = join.parent.fields.get(parts[1].lower())
        if pf is None:
            raise self.no_such_column(parts[1], join.parent, path.pos)
        return _Resolved(pf, f"{q(join.alias)}.{q(pf.name)}", join)

    # -- literals -----------------------------------------------------------------------------------------
    def _type_error(self, f: FieldInfo, lit: Literal) -> SoqlError:
        t = f.type
        if t in STRING_TYPES or t in ID_TYPES:
            detail = f"value of filter criterion for field '{f.name}' must be of type {'id' if t in ID_TYPES else 'string'} and should be enclosed in quotes"
        else:
            soap = {"boolean": "boolean", "date": "date", "datetime": "dateTime"}.get(
                t, "integer" if t in INTEGER_TYPES else "double"
            )
            detail = f"value of filter criterion for field '{f.name}' must be of type {soap} and should not be enclosed in quotes"
        return self.error("INVALID_FIELD", detail, lit.pos)

    def param(self, f: FieldInfo, lit: Literal) -> Any:
        """The stored-format parameter for a non-null, non-date-constant literal compared with field ``f``."""
        t, kind = f.type, lit.kind
        if t in ID_TYPES:
            if kind != "string":
                raise self._type_error(f, lit)
            norm = normalize_id(lit.value)  # type: ignore[arg-type]
            if norm is None:
                raise self.error("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}", lit.pos)
            return norm
        if t == "boolean":
            if kind != "boolean":
                raise self._type_error(f, lit)
            return 1 if lit.value else 0
        if t in NUMBER_TYPES:
            if kind != "number":
                raise self._type_error(f, lit)
            return lit.value
        if t == "date":
            if kind != "date":
                raise self._type_error(f, lit)
            return lit.value.isoformat()  # type: ignore[attr-defined]
        if t == "datetime":
            if kind != "datetime":
                raise self._type_error(f, lit)
            return format_datetime(lit.value)  # type: ignore[arg-type]
        # string-like (and unknown types): text
        if kind != "string":
            raise self._type_error(f, lit)
        return lit.value

    def is_null_literal(self, f: FieldInfo, lit: Literal) -> bool:
        if lit.kind == "null":
            return True
        # an empty string compared with an id field means "no id"
        return f.type in ID_TYPES and lit.kind == "string" and lit.value == ""

    @staticmethod
    def col(r: _Resolved) -> str:
        return f"{r.sql} COLLATE NOCASE" if r.field.type in STRING_TYPES else r.sql

    # -- WHERE ----------------------------------------------------------------------------------------------
    def cond(self, c: Condition, neg: bool, params: list, used: set[str]) -> str:
        if isinstance(c, Not):
            return self.cond(c.item, not neg, params, used)
        if isinstance(c, And | Or):
            conj = isinstance(c, And) != neg  # De Morgan
            parts = [self.cond(item, neg, params, used) for item in c.items]
            return "(" + (" AND " if conj else " OR ").join(parts) + ")"
        r = self.resolve(c.field)
        if r.join is not None:
            used.add(r.join.alias)
        if isinstance(c, Comparison):
            return self.comparison(r, c, neg, params)
        if isinstance(c, InList):
            return self.in_list(r, c, neg, params)
        if isinstance(c, Like):
            return self.like(r, c, neg, params)
        if isinstance(c, Includes):
            return self.includes(r, c, neg, params)
        raise TypeError(c)  # pragma: no cover

    @staticmethod
    def _with_null(r: _Resolved, sql: str, null_matches: bool) -> str:
        """``sql`` is a predicate over non-null values; make it match null iff ``null_matches``."""
        return f"({r.sql} IS NULL OR {sql})" if null_matches else sql

    def comparison(self, r: _Resolved, c: Comparison, neg: bool, params: list) -> str:
        f, lit, op = r.field, c.value, c.op
        if self.is_null_literal(f, lit):
            if op not in ("=", "!="):
                raise self.error("INVALID_QUERY_FILTER_OPERATOR", f"invalid operator on null: {op}", lit.pos)
            is_null = (op == "=") != neg
            return f"{r.sql} IS NULL" if is_null else f"{r.sql} IS NOT NULL"
        if lit.kind == "date_constant":
            return self.date_range(r, c, neg, params)
        value = self.param(f, lit)
        # non-null semantics: "!=" matches null, the others do not; NOT complements both parts
        null_matches = (op == "!=") != neg
        eff = _COMPLEMENT[op] if neg else op
        params.append(value)
        return self._with_null(r, f"{self.col(r)} {eff} ?", null_matches)

    def date_range(self, r: _Resolved, c: Comparison, neg: bool, params: list) -> str:
        f, lit = r.field, c.value
        if f.type not in ("date", "datetime"):
            raise self._type_error(f, lit)
        assert isinstance(lit.value, DateConstant)
        start_d, end_d = date_constant_range(lit.value, self.now)
        if f.type == "date":
            start, end = start_d.isoformat(), end_d.isoformat()
        else:
            start = format_datetime(dt.datetime.combine(start_d, dt.time(), dt.UTC))
            end = format_datetime(dt.datetime.combine(end_d, dt.time(), dt.UTC))
        col = r.sql
        # each op as a predicate over non-null values, and its complement
        inside = (f"({col} >= ? AND {col} < ?)", [start, end])
        outside = (f"({col} < ? OR {col} >= ?)", [start, end])
        table = {
            "=": (inside, outside),
            "!=": (outside, inside),
            "<": ((f"{col} < ?", [start]), (f"{col} >= ?", [start])),
            ">=": ((f"{col} >= ?", [start]), (f"{col} < ?", [start])),
            ">": ((f"{col} >= ?", [end]), (f"{col} < ?", [end])),
            "<=": ((f"{col} < ?", [end]), (f"{col} >= ?", [end])),
        }
        positive, complement = table[c.op]
        sql, values = complement if neg else positive
        params.extend(values)
        null_matches = (c.op == "!=") != neg
        return self._with_null(r, sql, null_matches)

    def in_list(self, r: _Resolved, c: InList, neg: bool, params: list) -> str:
        f = r.field
        values: list[Any] = []
        has_null = False
        for lit in c.values:
            if self.is_null_literal(f, lit):
                has_null = True
            else:
                values.append(self.param(f, lit))
        positive = c.negated == neg  # NOT IN is NOT (IN)
        if values:
            marks = ", ".join("?" * len(values))
            params.extend(values)
            nonnull = f"{self.col(r)} {'IN' if positive else 'NOT IN'} ({marks})"
        else:
            nonnull = "0" if positive else f"{r.sql} IS NOT NULL"
        null_matches = has_null == positive
        return self._with_null(r, nonnull, null_matches)

    def like(self, r: _Resolved, c: Like, neg: bool, params: list) -> str:
        f = r.field
        if f.type not in STRING_TYPES:
            detail = (
                "invalid operator on id field"
                if f.type in ID_TYPES
                else f"invalid operator on field '{f.name}': LIKE"
            )
            raise self.error("INVALID_QUERY_FILTER_OPERATOR", detail, c.field.pos)
        params.append(c.pattern)
        if neg:
            return f"({r.sql} IS NULL OR {r.sql} NOT LIKE ? ESCAPE '\\')"
        return f"{r.sql} LIKE ? ESCAPE '\\'"

    def includes(self, r: _Resolved, c: Includes, neg: bool, params: list) -> str:
        if r.field.type != "multipicklist":
            raise self.error(
                "INVALID_QUERY_FILTER_OPERATOR",
                "includes or excludes operator only valid on multipicklist field",
                c.field.pos,
            )
        wrapped = f"(';' || {r.sql} || ';')"
        alternatives: list[str] = []
        for lit in c.values:
            parts = sorted({p.strip() for p in str(lit.value).split(";") if p.strip()})
            if not parts:
                alternatives.append("0")
                continue
            tests = []
            for part in parts:
                escaped = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                params.append(f"%;{escaped};%")
                tests.append(f"{wrapped} LIKE ? ESCAPE '\\'")
            alternatives.append("(" + " AND ".join(tests) + ")")
        positive = "(" + " OR ".join(alternatives) + ")"
        if c.negated == neg:  # INCLUDES, or NOT EXCLUDES
            return f"({r.sql} IS NOT NULL AND {positive})"
        return f"({r.sql} IS NULL OR NOT {positive})"

    # -- assemble -------------------------------------------------------------------------------------------
    def compile(self) -> CompiledQuery:
        query = self.query
        seen: set[str] = set()
        outputs: list[_OutField | _OutParent] = []
        columns: list[str] = [f"{q(MAIN)}.{q('Id')}"]
        parents: dict[str, _OutParent] = {}
        for path in query.fields:
            r = self.resolve(path)
            key = (r.join.relationship.lower() + "." if r.join else "") + r.field.name.lower()
            if key in seen:
                raise self.error("MALFORMED_QUERY", f"duplicate field selected: {path.text}", path.pos)
            seen.add(key)
            columns.append(r.sql)
            out_field = _OutField(r.field.name, len(columns) - 1, r.field)
            if r.join is None:
                outputs.append(out_field)
                continue
            parent_out = parents.get(r.join.alias)
            if parent_out is None:
                columns.append(f"{q(r.join.alias)}.{q('Id')}")
                parent_out = _OutParent(r.join.relationship, r.join.parent, len(columns) - 1)
                parents[r.join.alias] = parent_out
                outputs.append(parent_out)
            parent_out.fields.append(out_field)
        select_joins = {j.alias for j in self.joins.values()}

        # WHERE
        where_params: list = []
        where_joins: set[str] = set()
        clauses: list[str] = []
        if not self.include_deleted:
            # unary "+" keeps SQLite from choosing a (useless, 99%-match) IsDeleted index over a selective one
            clauses.append(f"+{q(MAIN)}.{q('IsDeleted')} = 0")
        if self.owner_id is not None and self.obj.has_owner:
            clauses.append(f"{q(MAIN)}.{q('OwnerId')} = ?")
            where_params.append(normalize_id(self.owner_id) or self.owner_id)
        if query.where is not None:
            clauses.append(self.cond(query.where, False, where_params, where_joins))

        # ORDER BY (+ hidden key columns for keyset paging)
        order_parts: list[str] = []
        key_exprs: list[tuple[str, bool, bool]] = []  # (expr, descending, nulls_first)
        order_joins: set[str] = set()
        unique = False
        for item in query.order_by:
            r = self.resolve(item.field)
            if r.join is not None:
                order_joins.add(r.join.alias)
            expr = self.col(r)
            part = expr + (" DESC" if item.descending else "")
            if item.nulls_first == item.descending:  # not SQLite's (= Salesforce's) default
                part += " NULLS FIRST" if item.nulls_first else " NULLS LAST"
            order_parts.append(part)
            key_exprs.append((expr, item.descending, item.nulls_first))
            if r.join is None and r.field.name.lower() == "id":
                unique = True
                break
        if not unique:
            rowid = f"{q(MAIN)}.rowid"
            order_parts.append(rowid)
            key_exprs.append((rowid, False, True))
        key_start = len(columns)
        columns.extend(e for e, _, _ in key_exprs)

        def from_sql(aliases: set[str]) -> str:
            sql = f"FROM {q(self.obj.table)} AS {q(MAIN)}"
            for j in self.joins.values():
                if j.alias in aliases:
                    sql += (
                        f" LEFT JOIN {q(j.parent.table)} AS {q(j.alias)}"
                        f" ON {q(j.alias)}.{q('Id')} = {q(MAIN)}.{q(j.fk.name)}"
                    )
            return sql

        where_sql = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        all_joins = select_joins | where_joins | order_joins
        base_sql = f"SELECT {', '.join(columns)} {from_sql(all_joins)}{where_sql}"
        order_sql = "ORDER BY " + ", ".join(order_parts)
        select_sql = f"{base_sql} {order_sql}"
        if query.limit is not None or query.offset is not None:
            limit = -1 if query.limit is None else query.limit
            select_sql += f" LIMIT {limit}"
            if query.offset:
                select_sql += f" OFFSET {query.offset}"
            inner = f"SELECT 1 {from_sql(where_joins)}{where_sql} LIMIT {limit}"
            if query.offset:
                inner += f" OFFSET {query.offset}"
            count_sql = f"SELECT COUNT(*) FROM ({inner})"
        else:
            count_sql = f"SELECT COUNT(*) {from_sql(where_joins)}{where_sql}"

        compiled = CompiledQuery(
            object=self.obj,
            is_count=query.is_count,
            select_sql=select_sql,
            params=list(where_params),
            count_sql=count_sql,
            count_params=list(where_params),
            api_version=self.api_version,
            limit=query.limit,
            offset=query.offset,
            _outputs=outputs,
            _base_sql=base_sql,
            _order_sql=order_sql,
            _has_where=bool(clauses),
            _seek=lambda after: _seek_predicate(key_exprs, after),
            _key_start=key_start,
            params_where=list(where_params),
        )
        return compiled


def _seek_predicate(keys: list[tuple[str, bool, bool]], after: Sequence[Any]) -> tuple[str, list]:
    """A predicate selecting rows strictly after the key ``after`` in the (total) order given by ``keys``."""
    if len(after) != len(keys):
        raise ValueError("sort key does not match this query")
    params: list = []
    disjuncts: list[str] = []
    equal_prefix: list[str] = []
    equal_params: list = []
    for (expr, desc, nulls_first), value in zip(keys, after, strict=True):
        # rows strictly after `value` on this key
        if value is None:
            after_sql = f"{expr} IS NOT NULL" if nulls_first else None
            same_sql = f"{expr} IS NULL"
            same_params: list = []
            after_params: list = []
        else:
            cmp = "<" if desc else ">"
            after_sql = f"{expr} {cmp} ?"
            after_params = [value]
            if not nulls_first:
                after_sql = f"({after_sql} OR {expr} IS NULL)"
            same_sql = f"{expr} = ?"
            same_params = [value]
        if after_sql is not None:
            disjuncts.append("(" + " AND ".join([*equal_prefix, after_sql]) + ")")
            params.extend([*equal_params, *after_params])
        equal_prefix.append(same_sql)
        equal_params.extend(same_params)
    if not disjuncts:
        return "0", []
    sql = "(" + " OR ".join(disjuncts) + ")"
    # a leading, index-friendly bound on the first key
    expr, desc, nulls_first = keys[0]
    first = after[0]
    if first is not None:
        bound = f"{expr} {'<=' if desc else '>='} ?"
        if not nulls_first:
            bound = f"({bound} OR {expr} IS NULL)"
        sql = f"{bound} AND {sql}"
        params.insert(0, first)
    elif nulls_first is False:
        sql = f"{expr} IS NULL AND {sql}"
    return sql, params


def compile_query(
    query: str | Query,
    schema: Schema,
    *,
    include_deleted: bool = False,
    owner_id: str | None = None,
    api_version: str = "59.0",
    now: dt.datetime | None = None,
) -> CompiledQuery:
    """Parse (if needed) and compile a SOQL query. Raises :class:`SoqlError`."""
    parsed = parse(query) if isinstance(query, str) else query
    return _Compiler(
        parsed,
        schema,
        include_deleted=include_deleted,
        owner_id=owner_id,
        api_version=api_version,
        now=now,
    ).compile()
