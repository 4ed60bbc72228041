"""Helpers to build SQLite tables following the storage conventions (for tests and tools)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .compiler import q
from .schema import (
    ID_TYPES,
    INTEGER_TYPES,
    NUMBER_TYPES,
    STRING_TYPES,
    DictSchema,
    FieldInfo,
    ObjectInfo,
    make_object,
)


def column_type(field_type: str, *, nocase: bool = True) -> str:
    if field_type in STRING_TYPES:
        return "TEXT COLLATE NOCASE" if nocase else "TEXT"
    if field_type in ID_TYPES:
        return "TEXT"
    if field_type == "boolean" or field_type in INTEGER_TYPES:
        return "INTEGER"
    if field_type in NUMBER_TYPES:
        return "REAL"
    return "TEXT"


def create_table(conn: sqlite3.Connection, obj: ObjectInfo, *, nocase: bool = True) -> None:
    """Create ``obj``'s table. String-like columns get ``COLLATE NOCASE`` (so their indexes serve the compiler's
    case-insensitive comparisons and sorts) unless ``nocase`` is False."""
    cols = []
    for f in obj.fields.values():
        if f.name == "Id":
            cols.append(f"{q('Id')} TEXT PRIMARY KEY")
        elif f.name == "IsDeleted":
            cols.append(f"{q('IsDeleted')} INTEGER NOT NULL DEFAULT 0")
        else:
            cols.append(f"{q(f.name)} {column_type(f.type, nocase=nocase)}")
    if "isdeleted" not in obj.fields:
        cols.append(f"{q('IsDeleted')} INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"CREATE TABLE {q(obj.table)} ({', '.join(cols)})")


def insert_rows(conn: sqlite3.Connection, obj: ObjectInfo, rows: Iterable[dict]) -> None:
    names = [f.name for f in obj.fields.values()]
    sql = f"INSERT INTO {q(obj.table)} ({', '.join(map(q, names))}) VALUES ({', '.join('?' * len(names))})"
    conn.executemany(
        sql,
        [[(r.get(n, 0) if n == "IsDeleted" else r.get(n)) for n in names] for r in rows],
    )


def sample_schema() -> DictSchema:
    """A small Lead/Contact/Account/User/Group schema for tests."""
    owner = FieldInfo("OwnerId", "reference", ("User", "Group"), "Owner")
    stamps = [
        FieldInfo("CreatedDate", "datetime"),
        FieldInfo("LastModifiedDate", "datetime"),
        FieldInfo("SystemModstamp", "datetime"),
    ]
    user = make_object(
        "User",
        [
            FieldInfo("Username", "string"),
            FieldInfo("Email", "email"),
            FieldInfo("FirstName", "string"),
            FieldInfo("LastName", "string"),
            FieldInfo("IsActive", "boolean"),
            *stamps,
        ],
        table="sf_user",
        has_owner=False,
    )
    group = make_object(
        "Group", [FieldInfo("Name", "string"), FieldInfo("Type", "picklist")], has_owner=False
    )
    account = make_object(
        "Account",
        [FieldInfo("Name", "string"), FieldInfo("Industry", "picklist"), owner, *stamps],
    )
    contact = make_object(
        "Contact",
        [
            FieldInfo("FirstName", "string"),
            FieldInfo("LastName", "string"),
            FieldInfo("Email", "email"),
            FieldInfo("AccountId", "reference", ("Account",), "Account"),
            FieldInfo("HasOptedOutOfEmail", "boolean"),
            owner,
            *stamps,
        ],
    )
    lead = make_object(
        "Lead",
        [
            FieldInfo("FirstName", "string"),
            FieldInfo("LastName", "string"),
            FieldInfo("Company", "string"),
            FieldInfo("Email", "email"),
            FieldInfo("Status", "picklist"),
            FieldInfo("Interests", "multipicklist"),
            FieldInfo("NumberOfEmployees", "int"),
            FieldInfo("AnnualRevenue", "currency"),
            FieldInfo("Score", "double"),
            FieldInfo("HasOptedOutOfEmail", "boolean"),
            FieldInfo("IsConverted", "boolean"),
            FieldInfo("ConvertedDate", "date"),
            FieldInfo("ConvertedContactId", "reference", ("Contact",), "ConvertedContact"),
            owner,
            *stamps,
        ],
    )
    return DictSchema([user, group, account, contact, lead])
