"""SOQL for crmsandbox: parser, SQLite compiler and a reference evaluator.

Typical use by the server::

    from crmsandbox.soql import SoqlError, compile_query

    try:
        cq = compile_query(soql_text, schema, include_deleted=is_query_all, owner_id=sharing_user_id,
                           api_version="59.0")
    except SoqlError as exc:  # HTTP 400, body exc.to_json() == [{"message": ..., "errorCode": ...}]
        ...
    total = conn.execute(cq.count_sql, cq.count_params).fetchone()[0]      # totalSize
    cursor = conn.execute(cq.select_sql, cq.params)                         # rows in SOQL order
    records = [] if cq.is_count else [cq.row_to_record(r) for r in cursor.fetchmany(2000)]

Storage it compiles for: one rowid table per object (``ObjectInfo.table``, not ``WITHOUT ROWID``: ``rowid``
breaks ORDER BY ties), a column per field named exactly ``FieldInfo.name``, ``Id`` TEXT 18-char, ``IsDeleted``
0/1, booleans 0/1, dates ``YYYY-MM-DD``, datetimes ``2024-01-05T10:20:30.000+0000`` (UTC), NULL for null.

Semantics (Salesforce's):
  * two-valued logic: ``F != v``, ``F NOT IN (...)``, ``NOT (F = v)``, ``EXCLUDES`` match rows where F is null;
    ``=``, ``<``..., ``LIKE``, ``IN`` never match null unless the value list holds ``null``;
  * text comparisons, IN, LIKE and ORDER BY on text are case-insensitive (ASCII only, like SQLite NOCASE);
  * ids: 15-char literals and 18-char literals in any case match the stored 18-char id;
  * date constants (TODAY, YESTERDAY, TOMORROW, LAST_N_DAYS:n = [today-n, tomorrow), NEXT_N_DAYS:n =
    [tomorrow, tomorrow+n), N_DAYS_AGO:n, THIS/LAST/NEXT_MONTH, THIS/LAST/NEXT_YEAR) are day ranges in UTC:
    ``=`` inside, ``!=`` outside, ``<`` before the start, ``<=`` before the end, ``>`` from the end on,
    ``>=`` from the start on; datetime literals are compared after conversion to UTC;
  * ORDER BY: ASC defaults to NULLS FIRST, DESC to NULLS LAST; ties (and no ORDER BY) follow rowid;
  * mixing AND and OR without parentheses, and NOT anywhere but at the start of a (parenthesised) condition,
    are MALFORMED_QUERY, as in Salesforce; a date literal against a datetime field (and vice versa), a number
    against a text field etc. are INVALID_FIELD; a malformed id literal is INVALID_QUERY_FILTER_OPERATOR.

Not supported (MALFORMED_QUERY / INVALID_FIELD): aggregates other than ``COUNT()``, GROUP BY, functions
(toLabel, FIELDS(), FORMAT...), child subqueries, semi-joins, parent paths deeper than one level, TYPEOF,
WITH / FOR / USING SCOPE clauses.
"""

from .ast import Query
from .compiler import CompiledQuery, compile_query, date_constant_range, format_datetime
from .errors import SoqlError
from .ids import is_valid_id, normalize_id, to_18
from .parser import parse
from .reference import evaluate
from .schema import DictSchema, FieldInfo, ObjectInfo, Schema, make_object

__all__ = [
    "CompiledQuery",
    "DictSchema",
    "FieldInfo",
    "ObjectInfo",
    "Query",
    "Schema",
    "SoqlError",
    "compile_query",
    "date_constant_range",
    "evaluate",
    "format_datetime",
    "is_valid_id",
    "make_object",
    "normalize_id",
    "parse",
    "to_18",
]
