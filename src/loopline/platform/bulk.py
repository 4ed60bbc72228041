"""Set-based writes for batch jobs (CRM sync): many rows in one statement, on SQLite and PostgreSQL.

Django's ``bulk_update`` builds one ``CASE WHEN`` per row and field — fine for dozens of rows, slow for thousands.
:func:`update_columns` sends ``WITH v(...) AS (VALUES ...) UPDATE ... FROM v`` instead; :func:`insert_rows` a
multi-row ``INSERT`` from plain dicts (no model instances). Neither sends signals or runs ``save()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, models, router
from django.db.models.options import Options
from django.utils import timezone


def _cast(conn, field: models.Field) -> str:
    if conn.vendor != "postgresql":
        return "%s"
    db_type = field.db_type(conn)
    if isinstance(field, models.ForeignKey):
        db_type = field.target_field.rel_db_type(conn)
    return f"CAST(%s AS {db_type})" if db_type else "%s"


def _column(field: models.Field) -> str:
    # Only non-concrete fields have no column; these functions write concrete fields only.
    assert field.column is not None, f"{field} has no database column"
    return field.column


def _concrete_field(opts: Options, name: str) -> models.Field:
    field = opts.get_field(name)
    # ``fields`` name attributes of the model's own columns, never reverse relations.
    assert isinstance(field, models.Field), f"{name} is not a field of {opts.label}"
    return field


def update_columns(model: type[models.Model], values_by_pk: Mapping[Any, Mapping[str, Any]],
                   fields: Sequence[str], *, batch_size: int = 1000) -> int:
    """Set ``fields`` (attribute names) of the rows ``values_by_pk`` names; every row must give every field."""
    if not values_by_pk or not fields:
        return 0
    conn = connections[router.db_for_write(model)]
    opts = model._meta
    model_fields = [_concrete_field(opts, name) for name in fields]
    table = conn.ops.quote_name(opts.db_table)
    pk_col = conn.ops.quote_name(_column(opts.pk))
    names = ["pk_", *[f"c{i}" for i in range(len(fields))]]
    sets = ", ".join(f"{conn.ops.quote_name(_column(f))} = v.c{i}" for i, f in enumerate(model_fields))
    one = "(" + ", ".join([_cast(conn, opts.pk)] + [_cast(conn, f) for f in model_fields]) + ")"
    items = list(values_by_pk.items())
    count = 0
    with conn.cursor() as cursor:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            params: list[Any] = []
            for pk, values in chunk:
                params.append(pk)
                for name, f in zip(fields, model_fields, strict=True):
                    params.append(f.get_db_prep_save(values[name], conn))
            sql = (f"WITH v({', '.join(names)}) AS (VALUES {', '.join([one] * len(chunk))}) "
                   f"UPDATE {table} SET {sets} FROM v WHERE {table}.{pk_col} = v.pk_")
            cursor.execute(sql, params)
            count += cursor.rowcount if cursor.rowcount >= 0 else len(chunk)  # SQLite reports -1 here
    return count


def insert_rows(model: type[models.Model], rows: Sequence[Mapping[str, Any]], *, batch_size: int = 500,
                ignore_conflicts: bool = False) -> int:
    """Insert ``rows`` (dicts of attribute name → value; missing attributes take the field default, ``auto_now``
    fields now)."""
    if not rows:
        return 0
    conn = connections[router.db_for_write(model)]
    opts = model._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    now = timezone.now()
    defaults = {}
    for f in fields:
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            defaults[f.attname] = now
        else:
            defaults[f.attname] = f.get_default()
    table = conn.ops.quote_name(opts.db_table)
    columns = ", ".join(conn.ops.quote_name(_column(f)) for f in fields)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    per = max(1, min(batch_size, 30000 // len(fields)))
    count = 0
    with conn.cursor() as cursor:
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            params: list[Any] = []
            for row in chunk:
                for f in fields:
                    value = row[f.attname] if f.attname in row else row.get(f.name, defaults.get(f.attname))
                    if isinstance(value, models.Model):
                        value = value.pk
                    params.append(f.get_db_prep_save(value, conn))
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))}{conflict}",
                           params)
            count += cursor.rowcount
    return count
