"""The sandbox's storage layer: one SQLite database per org, one table per object.

Everything that reads or writes records goes through :class:`Store`; the HTTP layer (``crmsandbox.api``),
the CLI, the seed generator and later the Bulk API / web UI build on these functions:

Records (``principal`` is the acting user, ``client`` the ``Sforce-Call-Options: client=`` value):
    create(obj, values, principal, client=None) -> id
    update(obj, id, values, principal, client=None)
    upsert(obj, ext_field, ext_value, values, principal, client=None) -> (id, created)
    delete(obj, id, principal, client=None)            soft delete (IsDeleted=1)
    undelete(id, principal, client=None)
    merge(obj, master_id, loser_ids, principal, client=None)
    convert_lead(lead_id, principal, ...) -> {"leadId", "accountId", "contactId", "opportunityId"}
    get(obj, id, principal, fields=None, api_version) -> record dict (JSON shape, with attributes)
    find_by_field(obj, field, value, principal) -> [ids]
    bulk_insert(obj, rows) -> [ids]                    fast path for seeding (no validation, no change log)
Queries:
    query(soql, principal, include_deleted, batch_size, api_version) -> page dict
    query_more(locator, offset, principal, api_version) -> page dict
    updated_ids(obj, start, end, principal) / deleted_records(obj, start, end, principal)
Change log / history:
    changes(since_seq, limit, object=None) -> [change dicts]   every API write with its client id
Auth:
    principal_for_user(user_id), user_by_username(name), check_password(user_id, pw), set_password(...)
    create_user(...), add_app(...), app(consumer_key), issue_token(...), token_info(token), revoke...
API usage:
    count_api_call() -> (used, max) raising RecordError(REQUEST_LIMIT_EXCEEDED); api_usage() -> (used, max)

All writes are in :meth:`transaction` (nestable: SAVEPOINTs inside). Rows are stored as the SOQL engine
expects (see ``crmsandbox/soql``): a column per field named like the field, booleans 0/1, datetimes in the
wire format (UTC), ``IsDeleted`` on every table. The internal column ``_Client`` keeps the client id of the
last write (not in describe).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import itertools
import json
import logging
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crmsandbox import ids as idlib
from crmsandbox.errors import RecordError, RecordErrors
from crmsandbox.metadata import PERSON_MIRROR, FieldDef, ObjectDef, Registry
from crmsandbox.timeutil import format_dt, format_ms, now_ms, parse_date, parse_dt

log = logging.getLogger("crmsandbox.store")

EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")

VIEW_ALL_PROFILES = ("System Administrator", "B2BMA Integration User")
STRING_TYPES = frozenset({"string", "email", "phone", "url", "textarea", "picklist", "multipicklist", "combobox"})
NOT_FOUND_MSG = "The requested resource does not exist"
# reference fields used to find children (merge, cascade, conversion); others stay unindexed for write speed
INDEXED_REFERENCES = frozenset({"AccountId", "CampaignId", "LeadId", "ContactId", "WhoId", "WhatId",
                                "OpportunityId", "ParentId"})


@dataclass(frozen=True)
class Principal:
    """The user a request acts as."""

    user_id: str
    username: str
    profile: str
    view_all: bool
    modify_all: bool


@dataclass
class _Cursor:
    locator: str
    conn: sqlite3.Connection | None
    cursor: sqlite3.Cursor | None
    compiled: Any
    user_id: str
    total: int
    batch_size: int
    pos: int = 0  # offset of the next row not yet returned
    buffer: list[Any] = field(default_factory=list)
    last_offset: int = -1
    last_page: dict[str, Any] | None = None
    touched: float = 0.0
    exhausted: bool = False


#: Whether the current API request lets the active assignment rules run (the ``Sforce-Auto-Assign`` header; REST
#: applies them unless the header says FALSE). Set per request by the server; sandbox actions leave it off.
AUTO_ASSIGN: contextvars.ContextVar[bool] = contextvars.ContextVar("crmsandbox_auto_assign", default=False)


class Store:
    """One org's records. Not thread-safe: use it from one thread (the server's event loop)."""

    CURSOR_IDLE_SECONDS = 15 * 60
    MAX_CURSORS = 64

    def __init__(self, db_path: str, config: dict[str, Any]):
        self.db_path = str(db_path)
        self.config = config
        self.registry = Registry(config)
        self.org_id: str = config.get("org_id") or ""
        self.db = self._connect()
        self._depth = 0
        self._last_ms = 0
        self._stamp = ""
        self._stamp_ms = 0
        self._counters: dict[str, int] = {}
        self._fresh: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        self._finished: dict[str, tuple[int, dict[str, Any]]] = {}
        self._write_gen = 0
        self._count_cache: dict[tuple[Any, ...], int] = {}
        self._readers: list[sqlite3.Connection] = []
        self._select_cache: dict[str, tuple[str, list[FieldDef]]] = {}
        self._principals: dict[str, Principal] = {}
        self._tokens: dict[str, tuple[str, float, str]] = {}
        self._usage: dict[int, int] = {}
        self._usage_total = 0
        self._usage_dirty = False
        self._usage_flushed = 0.0
        self.daily_api_limit_override: int | None = None
        # Active assignment rules: object name -> the owner (user or queue id) a new record is assigned to.
        self.assignment_rules: dict[str, str] = dict(self.config.get("assignment_rules") or {})
        self._create_schema()
        self._init_counters()
        self._load_usage()
        self._soql_schema = None

    # ------------------------------------------------------------------------------------------ setup
    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        # the writer keeps a large page cache; query cursors (up to MAX_CURSORS open) a smaller one each
        conn.execute("PRAGMA cache_size=-16384" if readonly else "PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        if readonly:
            conn.execute("PRAGMA query_only=1")
        return conn

    def analyze(self) -> None:
        """Refresh the query planner's statistics (sampled, fast even for millions of rows). Without them
        SQLite may prefer the low-selectivity IsDeleted index over a selective one."""
        self.db.execute("PRAGMA analysis_limit=1000")
        self.db.execute("ANALYZE")
        for r in self._readers:
            r.close()
        self._readers.clear()

    def close(self) -> None:
        self.flush_usage(force=True)
        for c in list(self._cursors.values()):
            self._close_cursor(c)
        for r in self._readers:
            r.close()
        self._readers.clear()
        self.db.close()

    @property
    def soql_schema(self):
        if self._soql_schema is None:
            from crmsandbox.metadata import SoqlSchema

            self._soql_schema = SoqlSchema(self.registry)
        return self._soql_schema

    def _create_schema(self) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for o in self.registry.objects.values():
                self._create_table(o)
            for ddl in (
                "CREATE TABLE IF NOT EXISTS _credentials (user_id TEXT PRIMARY KEY, salt TEXT, hash TEXT)",
                "CREATE TABLE IF NOT EXISTS _apps (consumer_key TEXT PRIMARY KEY, consumer_secret TEXT, "
                "name TEXT, cert_pem TEXT, run_as_user_id TEXT, created TEXT)",
                "CREATE TABLE IF NOT EXISTS _tokens (token TEXT PRIMARY KEY, kind TEXT, user_id TEXT, "
                "consumer_key TEXT, issued_at REAL, expires_at REAL)",
                "CREATE TABLE IF NOT EXISTS _changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, stamp TEXT, "
                "object TEXT, record_id TEXT, change_type TEXT, user_id TEXT, client TEXT, fields TEXT)",
                "CREATE TABLE IF NOT EXISTS _api_usage (minute INTEGER PRIMARY KEY, n INTEGER)",
            ):
                db.execute(ddl)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _create_table(self, o: ObjectDef) -> None:
        t = o.table
        existing = {r[1] for r in self.db.execute(f'PRAGMA table_info("{t}")')}
        if not existing:
            cols = []
            for f in o.fields.values():
                if f.name == "Id":
                    cols.append('"Id" TEXT PRIMARY KEY')
                else:
                    cols.append(f'"{f.name}" {f.sql_type}')
            cols.append('"_Client" TEXT')
            self.db.execute(f'CREATE TABLE "{t}" ({", ".join(cols)})')
        else:
            for f in o.fields.values():
                if f.name not in existing:
                    self.db.execute(f'ALTER TABLE "{t}" ADD COLUMN "{f.name}" {f.sql_type}')
        idx = []
        if "SystemModstamp" in o.fields:
            idx.append(("smod", '"SystemModstamp"'))
            # serves IsDeleted filters and "live rows by SystemModstamp" (watermark queries, feeds)
            idx.append(("del_smod", '"IsDeleted", "SystemModstamp"'))
        else:
            idx.append(("del", '"IsDeleted"'))
        if o.has_owner:
            idx.append(("owner", '"OwnerId"'))
        for f in o.fields.values():
            if f.name == "Email" or f.external_id or f.unique or f.id_lookup:
                idx.append((f"lc_{f.name}", f'"{f.name}" COLLATE NOCASE'))
            elif f.type == "reference" and f.name in INDEXED_REFERENCES:
                idx.append((f"ref_{f.name}", f'"{f.name}"'))
        for name, expr in idx:
            self.db.execute(f'CREATE INDEX IF NOT EXISTS "ix_{t}_{name}" ON "{t}" ({expr})')

    def _init_counters(self) -> None:
        for o in self.registry.objects.values():
            n = self.db.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{o.table}"').fetchone()[0]
            self._counters[o.key_prefix] = max(self._counters.get(o.key_prefix, 0), n)
            if "SystemModstamp" in o.fields:
                row = self.db.execute(f'SELECT MAX("SystemModstamp") FROM "{o.table}"').fetchone()
                if row[0]:
                    dt = parse_dt(row[0])
                    if dt:
                        self._last_ms = max(self._last_ms, int(dt.timestamp() * 1000))

    def _next_id(self, o: ObjectDef) -> tuple[int, str]:
        if o.key_prefix not in self._fresh:
            # another process (e.g. `crmsandbox seed`) may have inserted rows since our last transaction
            for x in self.registry.objects.values():
                if x.key_prefix == o.key_prefix:
                    n = self.db.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{x.table}"').fetchone()[0]
                    self._counters[o.key_prefix] = max(self._counters.get(o.key_prefix, 0), n)
            self._fresh.add(o.key_prefix)
        n = self._counters[o.key_prefix] + 1
        self._counters[o.key_prefix] = n
        return n, idlib.make_id(o.key_prefix, n)

    # ------------------------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE); nested calls use SAVEPOINTs and roll back on their own.

        Every record written in one outermost transaction gets the same SystemModstamp, strictly greater than
        the stamp of any earlier transaction (even within the same millisecond).
        """
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
            self._fresh.clear()
            ms = max(now_ms(), self._last_ms + 1)
            self._last_ms = ms
            self._stamp_ms = ms
            self._stamp = format_ms(ms)
            self._depth = 1
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")
            finally:
                self._depth = 0
                self._write_gen += 1
        else:
            sp = f"sp{self._depth}"
            self.db.execute(f"SAVEPOINT {sp}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self.db.execute(f"ROLLBACK TO {sp}")
                self.db.execute(f"RELEASE {sp}")
                raise
            else:
                self.db.execute(f"RELEASE {sp}")
            finally:
                self._depth -= 1

    @property
    def stamp(self) -> str:
        """The current transaction's timestamp (wire format)."""
        return self._stamp

    # --------------------------------------------------------------------------------------- metadata
    def object(self, name: str) -> ObjectDef | None:
        return self.registry.get(name)

    def require_object(self, name: str) -> ObjectDef:
        o = self.registry.get(name)
        if o is None:
            raise RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)
        return o

    def object_for_id(self, record_id: str) -> ObjectDef | None:
        return self.registry.by_prefix.get(record_id[:3])

    # ------------------------------------------------------------------------------------- coercion
    def _coerce(self, o: ObjectDef, f: FieldDef, value: Any) -> Any:
        """Validate one incoming JSON value and convert it to its column value."""
        label = f.label or f.name
        if value is None:
            return None
        t = f.type
        if t in STRING_TYPES:
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            elif not isinstance(value, str):
                raise RecordError("JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of string from {_token(value)} value "
                                  f"{json.dumps(value)} or request may be missing a required field",
                                  [f.name])
            if value == "":
                return None
            if f.length and len(value) > f.length:
                raise RecordError("STRING_TOO_LONG",
                                  f"{label}: data value too large: {value[:100]} (max length={f.length})",
                                  [f.name])
            if t == "email" and not EMAIL_RE.match(value):
                raise RecordError("INVALID_EMAIL_ADDRESS", f"{label}: invalid email address: {value}",
                                  [f.name])
            if t == "picklist" and f.picklist:
                canon = _match_pick(f.picklist, value)
                if canon is None:
                    if f.restricted:
                        raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                          f"{label}: bad value for restricted picklist field: {value}", [f.name])
                    return value
                return canon
            if t == "multipicklist" and f.picklist:
                parts = [p for p in value.split(";") if p != ""]
                out = []
                for p in parts:
                    canon = _match_pick(f.picklist, p)
                    if canon is None and f.restricted:
                        raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                          f"{label}: bad value for restricted picklist field: {p}", [f.name])
                    out.append(canon or p)
                return ";".join(out) or None
            return value
        if t == "boolean":
            if isinstance(value, bool):
                return 1 if value else 0
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return 1 if value.lower() == "true" else 0
            raise RecordError("JSON_PARSER_ERROR",
                              f"Cannot deserialize instance of boolean from {_token(value)} value "
                              f"{json.dumps(value)} or request may be missing a required field", [f.name])
        if t == "int":
            try:
                if isinstance(value, bool):
                    raise ValueError
                num = float(value)
                if not math.isfinite(num):
                    raise ValueError
                num_i = value if isinstance(value, int) else round(num)
            except (TypeError, ValueError, OverflowError):
                raise RecordError("JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of int from {_token(value)} value "
                                  f"{json.dumps(value)} or request may be missing a required field",
                                  [f.name]) from None
            if abs(num_i) >= 10**18:
                raise RecordError("NUMBER_OUTSIDE_VALID_RANGE",
                                  f"{label}: value outside of valid range on numeric field: {value}", [f.name])
            return num_i
        if t in ("double", "currency", "percent"):
            try:
                if isinstance(value, bool):
                    raise ValueError
                num = float(value)
                if not math.isfinite(num):
                    raise ValueError
                return num
            except (TypeError, ValueError, OverflowError):
                raise RecordError("JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of double from {_token(value)} value "
                                  f"{json.dumps(value)} or request may be missing a required field",
                                  [f.name]) from None
        if t == "date":
            d = parse_date(value) if isinstance(value, str) else None
            if d is None:
                raise RecordError("JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of date from {_token(value)} value "
                                  f"{json.dumps(value)} or request may be missing a required field", [f.name])
            return d.isoformat()
        if t == "datetime":
            dt = parse_dt(value) if isinstance(value, str) else None
            if dt is None:
                raise RecordError("JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of datetime from {_token(value)} value "
                                  f"{json.dumps(value)} or request may be missing a required field", [f.name])
            return format_dt(dt)
        if t in ("reference", "id"):
            norm = idlib.normalize(value) if isinstance(value, str) else None
            if norm is None:
                raise RecordError("MALFORMED_ID", f"{label}: id value of incorrect type: {value}", [f.name])
            targets = f.reference_to
            target_objs = [self.registry.objects[x] for x in targets if x in self.registry.objects]
            if target_objs and not any(norm.startswith(x.key_prefix) for x in target_objs):
                raise RecordError("FIELD_INTEGRITY_EXCEPTION", f"{label}: id value of incorrect type: {value}",
                                  [f.name])
            for x in target_objs:
                if norm.startswith(x.key_prefix):
                    row = self.db.execute(f'SELECT "IsDeleted" FROM "{x.table}" WHERE "Id"=?', (norm,)).fetchone()
                    if row is not None:
                        if row[0]:
                            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", [f.name])
                        return norm
            if target_objs:
                raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name])
            return norm
        return value

    def _check_fields(self, o: ObjectDef, values: dict[str, Any], creating: bool,
                      system: bool) -> tuple[dict[str, Any], list[RecordError]]:
        """Map incoming field names to canonical ones and coerce the values."""
        out: dict[str, Any] = {}
        errors: list[RecordError] = []
        not_writable: list[str] = []
        for key, value in values.items():
            if key == "attributes":
                continue
            f = o.lookup(key)
            if f is None:
                raise RecordErrors([RecordError(
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type {o.name}", [key])])
            if f.name == "Id":
                if system:
                    continue
                raise RecordErrors([RecordError(
                    "INVALID_FIELD", "The Id field should not be specified in the sobject data.", ["Id"])])
            if not system and not (f.createable if creating else f.updateable):
                not_writable.append(f.name)
                continue
            try:
                out[f.name] = self._coerce(o, f, value)
            except RecordError as e:
                errors.append(e)
        if not_writable:
            raise RecordErrors([RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(not_writable)}. Please check the security settings "
                f"of this field and verify that it is read/write for your profile or permission set.",
                not_writable)])
        return out, errors

    def _derive(self, o: ObjectDef, rec: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Maintain computed fields (Name, IsClosed, ...) in ``rec`` (the full merged row)."""
        n = o.name
        if n in ("Lead", "Contact", "User") or (n == "Account" and rec.get("IsPersonAccount")):
            rec["Name"] = " ".join(x for x in (rec.get("FirstName"), rec.get("LastName")) if x) or None
        if n == "User" and not rec.get("Alias"):
            rec["Alias"] = ((rec.get("FirstName") or "")[:1] + (rec.get("LastName") or ""))[:8] or "user"
        if n == "Group" and not rec.get("DeveloperName") and rec.get("Name"):
            rec["DeveloperName"] = re.sub(r"\W+", "_", rec["Name"]).strip("_")
        if n == "Opportunity":
            stage = rec.get("StageName") or ""
            rec["IsClosed"] = 1 if stage.startswith("Closed") else 0
            rec["IsWon"] = 1 if stage == "Closed Won" else 0
        if n == "Task":
            rec["IsClosed"] = 1 if rec.get("Status") == "Completed" else 0
        if n == "CampaignMember":
            responded = rec.get("Status") == "Responded"
            rec["HasResponded"] = 1 if responded else 0
            if responded and not rec.get("FirstRespondedDate"):
                rec["FirstRespondedDate"] = self._stamp[:10]

    def _validate_record(self, o: ObjectDef, rec: dict[str, Any], errors: list[RecordError],
                         touched: Iterable[str]) -> None:
        missing = []
        person = o.name == "Account" and rec.get("IsPersonAccount")
        for f in o.fields.values():
            if f.nillable or not f.createable or f.type == "boolean":
                continue
            if person and f.name == "Name":
                continue
            if rec.get(f.name) is None:
                missing.append(f.name)
        if person and rec.get("LastName") is None:
            missing.append("LastName")
        if o.name == "CampaignMember" and not rec.get("LeadId") and not rec.get("ContactId"):
            missing.append("ContactId")
        if missing:
            errors.append(RecordError("REQUIRED_FIELD_MISSING",
                                      f"Required fields are missing: [{', '.join(missing)}]", missing))
        if errors:
            raise RecordErrors(errors)
        for rule in o.validation_rules:
            if rule.violated(rec):
                errors.append(RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, [rule.field]))
        if errors:
            raise RecordErrors(errors)
        touched = set(touched)
        for f in o.fields.values():
            if (f.unique or f.external_id) and f.name in touched and rec.get(f.name) is not None:
                row = self.db.execute(
                    f'SELECT "Id" FROM "{o.table}" INDEXED BY "ix_{o.table}_lc_{f.name}" '
                    f'WHERE "{f.name}" = ? COLLATE NOCASE AND "Id" != ? '
                    f'AND "IsDeleted"=0 LIMIT 1', (rec[f.name], rec.get("Id") or "")).fetchone()
                if row:
                    raise RecordErrors([RecordError(
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {f.name} duplicates value on record with id: {row[0]}",
                        [f.name])])
        if o.name == "CampaignMember" and not rec.get("_existing"):
            for k in ("LeadId", "ContactId"):
                if rec.get(k):
                    row = self.db.execute(
                        f'SELECT "Id" FROM "{o.table}" WHERE "CampaignId"=? AND "{k}"=? AND "IsDeleted"=0 '
                        f'AND "Id" != ?', (rec["CampaignId"], rec[k], rec.get("Id") or "")).fetchone()
                    if row:
                        raise RecordErrors([RecordError("DUPLICATE_VALUE", "Already a campaign member.",
                                                        [k])])

    # ------------------------------------------------------------------------------------- row access
    def _row(self, o: ObjectDef, record_id: str) -> dict[str, Any] | None:
        cols, fdefs = self._select_cols(o)
        row = self.db.execute(f'SELECT {cols}, "_Client" FROM "{o.table}" WHERE "Id"=?', (record_id,)).fetchone()
        if row is None:
            return None
        d = {f.name: v for f, v in zip(fdefs, row, strict=False)}
        d["_Client"] = row[-1]
        return d

    def _select_cols(self, o: ObjectDef) -> tuple[str, list[FieldDef]]:
        hit = self._select_cache.get(o.name)
        if hit is None or len(hit[1]) != len(o.fields):
            fdefs = list(o.fields.values())
            hit = (", ".join(f'"{f.name}"' for f in fdefs), fdefs)
            self._select_cache[o.name] = hit
        return hit

    def _visible_row(self, o: ObjectDef, record_id: Any, principal: Principal | None,
                     allow_deleted: bool = False) -> dict[str, Any]:
        norm = idlib.normalize(record_id) if isinstance(record_id, str) else None
        if norm is None:
            raise RecordError("MALFORMED_ID", f"malformed id {record_id}", status=400)
        if not norm.startswith(o.key_prefix):
            raise RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)
        row = self._row(o, norm)
        if row is None or not self._can_see(o, row, principal):
            raise RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)
        if row.get("IsDeleted") and not allow_deleted:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", status=404)
        return row

    @staticmethod
    def _can_see(o: ObjectDef, row: dict[str, Any], principal: Principal | None) -> bool:
        if principal is None or principal.view_all or not o.has_owner:
            return True
        return row.get("OwnerId") == principal.user_id

    def to_record(self, o: ObjectDef, row: dict[str, Any], api_version: str = "59.0",
                  fields: list[str] | None = None) -> dict[str, Any]:
        """A stored row as the JSON record the REST API returns (booleans as JSON booleans)."""
        rec: dict[str, Any] = {"attributes": {"type": o.name,
                                              "url": f"/services/data/v{api_version}/sobjects/{o.name}/{row['Id']}"}}
        names = fields if fields is not None else list(o.fields)
        for name in names:
            f = o.fields[name]
            v = row.get(name)
            if f.type == "boolean":
                v = bool(v) if v is not None else False
            rec[name] = v
        return rec

    def resolve_fields(self, o: ObjectDef, names: Iterable[str]) -> list[str]:
        """Canonical names for a user-supplied field list; unknown → INVALID_FIELD."""
        out = []
        for n in names:
            n = n.strip()
            if not n:
                continue
            f = o.lookup(n)
            if f is None:
                raise RecordError("INVALID_FIELD", f"No such column '{n}' on entity '{o.name}'. If you are "
                                  "attempting to use a custom field, be sure to append the '__c' after the custom "
                                  "field name. Please reference your WSDL or the describe call for the appropriate "
                                  "names.", status=400)
            out.append(f.name)
        return out

    def get(self, obj: str | ObjectDef, record_id: str, principal: Principal | None,
            fields: list[str] | None = None, api_version: str = "59.0") -> dict[str, Any]:
        """Read one record (404 NOT_FOUND when invisible to ``principal``, ENTITY_IS_DELETED when deleted)."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        row = self._visible_row(o, record_id, principal)
        return self.to_record(o, row, api_version, fields)

    def find_by_field(self, obj: str | ObjectDef, field_name: str, value: Any,
                      principal: Principal | None) -> list[str]:
        """Ids of live records whose ``field_name`` equals ``value`` (case-insensitive for text)."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        f = o.lookup(field_name)
        if f is None:
            raise RecordError("NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                              f"{field_name}", status=404)
        if f.name == "Id":
            norm = idlib.normalize(value)
            if norm is None:
                return []
            value = norm
        if f.name == "Id":
            hint = ""
        elif f.name == "Email" or f.external_id or f.unique or f.id_lookup:
            hint = f'INDEXED BY "ix_{o.table}_lc_{f.name}"'
        else:
            hint = ""
        nocase = "COLLATE NOCASE" if f.type in STRING_TYPES else ""
        sql = f'SELECT "Id" FROM "{o.table}" {hint} WHERE "{f.name}" = ? {nocase} AND "IsDeleted"=0'
        params: list[Any] = [value]
        if principal is not None and not principal.view_all and o.has_owner:
            sql += ' AND "OwnerId"=?'
            params.append(principal.user_id)
        return [r[0] for r in self.db.execute(sql + " LIMIT 11", params)]

    # --------------------------------------------------------------------------------------- writes
    def _log(self, o: ObjectDef, record_id: str, change_type: str, principal: Principal | None,
             client: str | None, fields: Iterable[str] = ()) -> None:
        self.db.execute(
            "INSERT INTO _changes (stamp, object, record_id, change_type, user_id, client, fields) "
            "VALUES (?,?,?,?,?,?,?)",
            (self._stamp, o.name, record_id, change_type, principal.user_id if principal else None, client,
             json.dumps(sorted(fields))))

    def _insert_row(self, o: ObjectDef, rec: dict[str, Any]) -> None:
        cols = [k for k in rec if k in o.fields or k == "_Client"]
        self.db.execute(
            f'INSERT INTO "{o.table}" (rowid, {", ".join(f"{chr(34)}{c}{chr(34)}" for c in cols)}) '
            f'VALUES (?, {", ".join("?" for _ in cols)})',
            [rec["_rowid"], *(rec[c] for c in cols)])

    def create(self, obj: str | ObjectDef, values: dict[str, Any], principal: Principal | None,
               client: str | None = None, *, system: bool = False) -> str:
        """Insert a record after full validation; returns its 18-char id.

        ``system=True`` allows read-only fields (used by lead conversion and other sandbox actions).
        Raises :class:`RecordErrors` with Salesforce error codes.
        """
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        if not o.createable and not system:
            raise RecordErrors([RecordError("INVALID_TYPE_FOR_OPERATION",
                                            f"entity type {o.name} does not support insert")])
        if not isinstance(values, dict):
            raise RecordErrors([RecordError("JSON_PARSER_ERROR", "Expected a JSON object for the record")])
        with self.transaction():
            changes, errors = self._check_fields(o, values, creating=True, system=system)
            rec: dict[str, Any] = {}
            for f in o.fields.values():
                if f.default is not None:
                    rec[f.name] = (1 if f.default else 0) if f.type == "boolean" else f.default
                elif f.type == "boolean":
                    rec[f.name] = 0
            rec.update(changes)
            uid = principal.user_id if principal else self.admin_user_id()
            rowid, new_id = self._next_id(o)
            rec["_rowid"] = rowid
            rec["Id"] = new_id
            rec["IsDeleted"] = 0
            rec["CreatedDate"] = self._stamp
            rec["CreatedById"] = uid
            if "SystemModstamp" in o.fields:
                rec["LastModifiedDate"] = self._stamp
                rec["LastModifiedById"] = uid
                rec["SystemModstamp"] = self._stamp
            if o.has_owner and not rec.get("OwnerId"):
                rec["OwnerId"] = uid
            rule_owner = self.assignment_rules.get(o.name) if AUTO_ASSIGN.get() else None
            if o.has_owner and rule_owner:
                rec["OwnerId"] = rule_owner  # the active assignment rule wins over any owner sent
            rec["_Client"] = client
            if o.name == "Account" and ("LastName" in changes or "FirstName" in changes) \
                    and not changes.get("Name"):
                rec["IsPersonAccount"] = 1
            self._derive(o, rec, None)
            self._validate_record(o, rec, errors, changes.keys())
            self._insert_row(o, rec)
            self._log(o, new_id, "CREATE", principal, client, changes.keys())
            if o.name == "Account" and rec.get("IsPersonAccount"):
                contact_vals = {PERSON_MIRROR[k]: rec.get(k) for k in PERSON_MIRROR if rec.get(k) is not None}
                for k, v in rec.items():
                    if k.endswith("__pc") and v is not None:
                        contact_vals[k[:-4] + "__c"] = v
                contact_vals["AccountId"] = new_id
                contact_vals["OwnerId"] = rec.get("OwnerId")
                contact_vals["IsPersonAccount"] = True
                cid = self.create("Contact", _db_to_json(self.registry.objects["Contact"], contact_vals),
                                  principal, client, system=True)
                self.db.execute(f'UPDATE "{o.table}" SET "PersonContactId"=? WHERE "Id"=?', (cid, new_id))
            return new_id

    def update(self, obj: str | ObjectDef, record_id: str, values: dict[str, Any], principal: Principal | None,
               client: str | None = None, *, system: bool = False, _mirror: bool = True) -> None:
        """Update a record (full validation; converted leads are read-only)."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        if not o.updateable and not system:
            raise RecordErrors([RecordError("INVALID_TYPE_FOR_OPERATION",
                                            f"entity type {o.name} does not support update")])
        if not isinstance(values, dict):
            raise RecordErrors([RecordError("JSON_PARSER_ERROR", "Expected a JSON object for the record")])
        with self.transaction():
            old = self._visible_row(o, record_id, principal)
            if o.name == "Lead" and old.get("IsConverted") and not system:
                raise RecordErrors([RecordError("CANNOT_UPDATE_CONVERTED_LEAD",
                                                "cannot reference converted lead")])
            if principal is not None and not principal.modify_all and o.has_owner \
                    and old.get("OwnerId") != principal.user_id:
                raise RecordErrors([RecordError("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights "
                                                "on object id")])
            changes, errors = self._check_fields(o, values, creating=False, system=system)
            rec = dict(old)
            rec.update(changes)
            rec["_existing"] = True
            uid = principal.user_id if principal else self.admin_user_id()
            self._derive(o, rec, old)
            self._validate_record(o, rec, errors, changes.keys())
            if "SystemModstamp" in o.fields:
                rec["LastModifiedDate"] = self._stamp
                rec["LastModifiedById"] = uid
                rec["SystemModstamp"] = self._stamp
            rec["_Client"] = client
            cols = [k for k in rec if (k in o.fields or k == "_Client") and k != "Id"
                    and (k in changes or rec[k] != old.get(k) or k == "_Client")]
            if cols:
                self.db.execute(
                    f'UPDATE "{o.table}" SET {", ".join(f"{chr(34)}{c}{chr(34)}=?" for c in cols)} WHERE "Id"=?',
                    [*(rec[c] for c in cols), old["Id"]])
            changed = [k for k in changes if changes[k] != old.get(k)]
            if o.name in ("User", "Profile"):
                self._principals.clear()  # activity / profile changes take effect at once
            self._log(o, old["Id"], "UPDATE", principal, client, changed)
            self._history(o, old, rec, principal)
            if _mirror:
                self._mirror_person(o, old, rec, changed, principal, client)

    def _history(self, o: ObjectDef, old: dict[str, Any], new: dict[str, Any], principal: Principal | None) -> None:
        if not o.history:
            return
        if old.get("HasOptedOutOfEmail") == new.get("HasOptedOutOfEmail"):
            return
        h = self.registry.objects[o.history]
        rowid, hid = self._next_id(h)
        self._insert_row(h, {
            "_rowid": rowid, "Id": hid, "IsDeleted": 0, f"{o.name}Id": old["Id"], "Field": "HasOptedOutOfEmail",
            "DataType": "Boolean", "OldValue": "true" if old.get("HasOptedOutOfEmail") else "false",
            "NewValue": "true" if new.get("HasOptedOutOfEmail") else "false", "CreatedDate": self._stamp,
            "CreatedById": principal.user_id if principal else self.admin_user_id(),
        })

    def _mirror_person(self, o: ObjectDef, old: dict[str, Any], new: dict[str, Any], changed: list[str],
                       principal: Principal | None, client: str | None) -> None:
        if o.name == "Account" and old.get("IsPersonAccount") and old.get("PersonContactId"):
            vals = {PERSON_MIRROR[k]: new.get(k) for k in changed if k in PERSON_MIRROR}
            vals.update({k[:-4] + "__c": new.get(k) for k in changed if k.endswith("__pc")})
            if vals:
                c = self.registry.objects["Contact"]
                self.update(c, old["PersonContactId"], _db_to_json(c, vals), None, client, system=True,
                            _mirror=False)
        elif o.name == "Contact" and old.get("IsPersonAccount") and old.get("AccountId"):
            back = {v: k for k, v in PERSON_MIRROR.items()}
            vals = {back[k]: new.get(k) for k in changed if k in back}
            vals.update({k[:-3] + "__pc": new.get(k) for k in changed if k.endswith("__c")})
            if vals:
                a = self.registry.objects["Account"]
                self.update(a, old["AccountId"], _db_to_json(a, vals), None, client, system=True, _mirror=False)

    def upsert(self, obj: str | ObjectDef, ext_field: str, ext_value: Any, values: dict[str, Any],
               principal: Principal | None, client: str | None = None) -> tuple[str, bool]:
        """Create or update by an external-id (or idLookup) field. Returns ``(id, created)``.

        Several matches raise ``RecordError("MULTIPLE_CHOICES", ..., status=300)`` whose ``fields`` carry the
        matching ids.
        """
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        f = o.lookup(ext_field)
        if f is None or not (f.external_id or f.id_lookup or f.name == "Id"):
            raise RecordError("NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                              f"{ext_field}", status=404)
        if not isinstance(values, dict):
            raise RecordErrors([RecordError("JSON_PARSER_ERROR", "Expected a JSON object for the record")])
        body = dict(values)
        for k in list(body):
            kf = o.lookup(k) if k != "attributes" else None
            if kf is not None and kf.name == f.name:
                if f.name != "Id" and body[k] not in (None, ext_value) and str(body[k]).lower() != str(ext_value).lower():
                    raise RecordErrors([RecordError(
                        "INVALID_FIELD", f"The {f.name} field should not be specified in the sobject data.",
                        [f.name])])
                del body[k]
        if ext_value is None or ext_value == "":
            raise RecordErrors([RecordError("REQUIRED_FIELD_MISSING",
                                            f"Required fields are missing: [{f.name}]", [f.name])])
        with self.transaction():
            matches = self.find_by_field(o, f.name, ext_value, principal)
            if len(matches) > 1:
                raise RecordErrors([RecordError("MULTIPLE_CHOICES", f"more than one record found for external "
                                                f"id field: {matches}", matches, status=300)])
            if matches:
                self.update(o, matches[0], body, principal, client)
                return matches[0], False
            if f.name == "Id":
                raise RecordErrors([RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)])
            body[f.name] = ext_value
            return self.create(o, body, principal, client), True

    def delete(self, obj: str | ObjectDef | None, record_id: str, principal: Principal | None,
               client: str | None = None) -> None:
        """Soft-delete a record (and cascade to an account's contacts and opportunities)."""
        if obj is None:
            norm = idlib.normalize(record_id) if isinstance(record_id, str) else None
            if norm is None:
                raise RecordErrors([RecordError("MALFORMED_ID", f"malformed id {record_id}")])
            o = self.object_for_id(norm)
            if o is None:
                raise RecordErrors([RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")])
        else:
            o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        if not o.deletable:
            raise RecordErrors([RecordError("INVALID_TYPE_FOR_OPERATION",
                                            f"entity type {o.name} does not support delete")])
        with self.transaction():
            row = self._visible_row(o, record_id, principal)
            if principal is not None and not principal.modify_all and o.has_owner \
                    and row.get("OwnerId") != principal.user_id:
                raise RecordErrors([RecordError("INSUFFICIENT_ACCESS_OR_READONLY",
                                                "insufficient access rights on object id")])
            self._soft_delete(o, row["Id"], principal, client)
            if o.name == "Account":
                for child, fld in (("Contact", "AccountId"), ("Opportunity", "AccountId")):
                    co = self.registry.objects[child]
                    for (cid,) in self.db.execute(
                            f'SELECT "Id" FROM "{co.table}" WHERE "{fld}"=? AND "IsDeleted"=0', (row["Id"],)
                    ).fetchall():
                        self._soft_delete(co, cid, principal, client)

    def _soft_delete(self, o: ObjectDef, record_id: str, principal: Principal | None, client: str | None,
                     master_id: str | None = None) -> None:
        sets = ['"IsDeleted"=1', '"_Client"=?']
        params: list[Any] = [client]
        if "SystemModstamp" in o.fields:
            sets += ['"SystemModstamp"=?', '"LastModifiedDate"=?', '"LastModifiedById"=?']
            params += [self._stamp, self._stamp, principal.user_id if principal else self.admin_user_id()]
        if master_id is not None:
            sets.append('"MasterRecordId"=?')
            params.append(master_id)
        self.db.execute(f'UPDATE "{o.table}" SET {", ".join(sets)} WHERE "Id"=?', [*params, record_id])
        self._log(o, record_id, "DELETE", principal, client)

    def backdate(self, record_id: str, seconds: float) -> str:
        """Move a record's SystemModstamp ``seconds`` back (fault injection: a late-committing transaction)."""
        o = self.object_for_id(record_id)
        if o is None or "SystemModstamp" not in o.fields:
            raise RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)
        with self.transaction():
            row = self.db.execute(f'SELECT "SystemModstamp" FROM "{o.table}" WHERE "Id"=?', (record_id,)).fetchone()
            if row is None:
                raise RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)
            stamp = parse_dt(row[0])
            assert stamp is not None
            new = format_dt(stamp - timedelta(seconds=seconds))
            self.db.execute(f'UPDATE "{o.table}" SET "SystemModstamp"=? WHERE "Id"=?', (new, record_id))
        return new

    def undelete(self, record_id: str, principal: Principal | None, client: str | None = None) -> str:
        """Restore a soft-deleted record (and the children deleted with it). Returns the object name."""
        norm = idlib.normalize(record_id) if isinstance(record_id, str) else None
        if norm is None:
            raise RecordErrors([RecordError("MALFORMED_ID", f"malformed id {record_id}")])
        o = self.object_for_id(norm)
        if o is None:
            raise RecordErrors([RecordError("NOT_FOUND", NOT_FOUND_MSG, status=404)])
        with self.transaction():
            row = self._visible_row(o, norm, principal, allow_deleted=True)
            if not row["IsDeleted"]:
                raise RecordErrors([RecordError("UNDELETE_FAILED", "Entity is not in the recycle bin")])
            deleted_at = row.get("SystemModstamp")
            self._restore(o, norm, principal, client)
            if o.name == "Account":
                for child in ("Contact", "Opportunity"):
                    co = self.registry.objects[child]
                    for (cid,) in self.db.execute(
                            f'SELECT "Id" FROM "{co.table}" WHERE "AccountId"=? AND "IsDeleted"=1 '
                            f'AND "SystemModstamp"=?', (norm, deleted_at)).fetchall():
                        self._restore(co, cid, principal, client)
            return o.name

    def _restore(self, o: ObjectDef, record_id: str, principal: Principal | None, client: str | None) -> None:
        self.db.execute(
            f'UPDATE "{o.table}" SET "IsDeleted"=0, "MasterRecordId"=NULL, "SystemModstamp"=?, '
            f'"LastModifiedDate"=?, "LastModifiedById"=?, "_Client"=? WHERE "Id"=?'
            if "MasterRecordId" in o.fields else
            f'UPDATE "{o.table}" SET "IsDeleted"=0, "SystemModstamp"=?, "LastModifiedDate"=?, '
            f'"LastModifiedById"=?, "_Client"=? WHERE "Id"=?',
            (self._stamp, self._stamp, principal.user_id if principal else self.admin_user_id(), client,
             record_id))
        self._log(o, record_id, "UNDELETE", principal, client)

    # references re-pointed by merge: (object, field) per merged object
    _MERGE_CHILDREN = {
        "Lead": [("CampaignMember", "LeadId"), ("Task", "WhoId")],
        "Contact": [("CampaignMember", "ContactId"), ("Task", "WhoId"), ("OpportunityContactRole", "ContactId")],
        "Account": [("Contact", "AccountId"), ("Opportunity", "AccountId"), ("Task", "WhatId"),
                    ("Account", "ParentId")],
    }

    def merge(self, obj: str | ObjectDef, master_id: str, loser_ids: list[str], principal: Principal | None,
              client: str | None = None, master_fields: dict[str, Any] | None = None) -> None:
        """Merge up to two records into ``master_id``: children are re-parented to the master, losers are
        soft-deleted with ``MasterRecordId`` set. ``master_fields`` optionally updates the master."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        if o.name not in self._MERGE_CHILDREN:
            raise RecordErrors([RecordError("INVALID_TYPE_FOR_OPERATION", f"cannot merge {o.name} records")])
        if not loser_ids or len(loser_ids) > 2:
            raise RecordErrors([RecordError("INVALID_OPERATION", "merge takes one or two records to merge")])
        with self.transaction():
            master = self._visible_row(o, master_id, principal)
            losers = [self._visible_row(o, x, principal) for x in loser_ids]
            if any(lo["Id"] == master["Id"] for lo in losers):
                raise RecordErrors([RecordError("INVALID_OPERATION", "cannot merge a record with itself")])
            if master_fields:
                self.update(o, master["Id"], master_fields, principal, client)
            for lo in losers:
                for child, fld in self._MERGE_CHILDREN[o.name]:
                    co = self.registry.objects[child]
                    ids_ = [r[0] for r in self.db.execute(
                        f'SELECT "Id" FROM "{co.table}" WHERE "{fld}"=?', (lo["Id"],)).fetchall()]
                    for cid in ids_:
                        self.db.execute(
                            f'UPDATE "{co.table}" SET "{fld}"=?, "SystemModstamp"=?, "_Client"=? WHERE "Id"=?',
                            (master["Id"], self._stamp, client, cid))
                        self._log(co, cid, "UPDATE", principal, client, [fld])
                self._soft_delete(o, lo["Id"], principal, client, master_id=master["Id"])
            self.db.execute(f'UPDATE "{o.table}" SET "SystemModstamp"=? WHERE "Id"=?', (self._stamp, master["Id"]))

    def convert_lead(self, lead_id: str, principal: Principal | None, *, account_id: str | None = None,
                     contact_id: str | None = None, create_opportunity: bool = False,
                     opportunity_name: str | None = None, converted_status: str = "Closed - Converted",
                     owner_id: str | None = None, client: str | None = None,
                     person_account: bool = False) -> dict[str, Any]:
        """Convert a lead: create (or use the given) account and contact, optionally an opportunity, mark the
        lead converted (read-only afterwards) and move its campaign memberships to the contact. Into a person
        account (``person_account``, or ``account_id`` naming one): the contact is the account's person contact."""
        lead_o = self.registry.objects["Lead"]
        with self.transaction():
            lead = self._visible_row(lead_o, lead_id, principal)
            if lead.get("IsConverted"):
                raise RecordErrors([RecordError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")])
            owner = owner_id or lead.get("OwnerId")
            if owner and not owner.startswith("005"):
                owner = principal.user_id if principal else self.admin_user_id()
            if account_id:
                acc = self._visible_row(self.registry.objects["Account"], account_id, principal)
                account_id = acc["Id"]
                if acc.get("IsPersonAccount") and not contact_id:
                    contact_id = acc["PersonContactId"]
            elif person_account:
                a = self.registry.objects["Account"]
                vals = {k: lead.get(k) for k in ("FirstName", "LastName", "Salutation", "Phone", "Website",
                                                 "Industry")}
                vals.update({"PersonEmail": lead.get("Email"), "PersonTitle": lead.get("Title"),
                             "PersonMobilePhone": lead.get("MobilePhone"), "OwnerId": owner,
                             "PersonHasOptedOutOfEmail": bool(lead.get("HasOptedOutOfEmail")),
                             "PersonDoNotCall": bool(lead.get("DoNotCall")),
                             "BillingStreet": lead.get("Street"), "BillingCity": lead.get("City"),
                             "BillingState": lead.get("State"), "BillingPostalCode": lead.get("PostalCode"),
                             "BillingCountry": lead.get("Country")})
                account_id = self.create(a, _db_to_json(a, vals), principal, client, system=True)
                contact_id = self._visible_row(a, account_id, principal)["PersonContactId"]
            else:
                account_id = self.create("Account", {"Name": lead.get("Company") or lead.get("LastName"),
                                                     "Industry": lead.get("Industry"), "OwnerId": owner,
                                                     "Website": lead.get("Website"), "Phone": lead.get("Phone"),
                                                     "BillingStreet": lead.get("Street"),
                                                     "BillingCity": lead.get("City"),
                                                     "BillingState": lead.get("State"),
                                                     "BillingPostalCode": lead.get("PostalCode"),
                                                     "BillingCountry": lead.get("Country")},
                                         principal, client, system=True)
            if contact_id:
                con = self._visible_row(self.registry.objects["Contact"], contact_id, principal)
                contact_id = con["Id"]
            else:
                vals = {k: lead.get(k) for k in ("FirstName", "LastName", "Salutation", "Email", "Title", "Phone",
                                                 "MobilePhone", "LeadSource", "Description")}
                vals.update({"AccountId": account_id, "OwnerId": owner,
                             "HasOptedOutOfEmail": bool(lead.get("HasOptedOutOfEmail")),
                             "DoNotCall": bool(lead.get("DoNotCall")), "MailingStreet": lead.get("Street"),
                             "MailingCity": lead.get("City"), "MailingState": lead.get("State"),
                             "MailingPostalCode": lead.get("PostalCode"), "MailingCountry": lead.get("Country")})
                c = self.registry.objects["Contact"]
                for f in c.fields.values():
                    if f.custom and f.name in lead_o.fields and lead.get(f.name) is not None \
                            and not f.unique and not f.external_id:
                        vals[f.name] = lead.get(f.name)
                contact_id = self.create(c, _db_to_json(c, vals), principal, client, system=True)
            opp_id = None
            if create_opportunity:
                opp_id = self.create("Opportunity", {
                    "Name": opportunity_name or f"{lead.get('Company') or lead.get('LastName')}-",
                    "AccountId": account_id, "StageName": "Prospecting", "OwnerId": owner,
                    "CloseDate": (datetime.now(UTC) + timedelta(days=30)).date().isoformat(),
                    "LeadSource": lead.get("LeadSource")}, principal, client, system=True)
            self.update(lead_o, lead["Id"], {
                "IsConverted": True, "ConvertedAccountId": account_id, "ConvertedContactId": contact_id,
                "ConvertedOpportunityId": opp_id, "ConvertedDate": self._stamp[:10], "Status": converted_status,
            }, principal, client, system=True)
            cm = self.registry.objects["CampaignMember"]
            self.db.execute(f'UPDATE "{cm.table}" SET "ContactId"=?, "SystemModstamp"=? WHERE "LeadId"=? '
                            f'AND "ContactId" IS NULL', (contact_id, self._stamp, lead["Id"]))
            return {"leadId": lead["Id"], "accountId": account_id, "contactId": contact_id,
                    "opportunityId": opp_id}

    def bulk_insert(self, obj: str | ObjectDef, rows: list[dict[str, Any]], owner_id: str | None = None) -> list[str]:
        """Fast insert of already-valid rows (column values, booleans 0/1) for seeding: no validation, no
        change log. System fields default to the transaction stamp unless given. Returns the new ids."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        if not rows:
            return []
        uid = owner_id or self.admin_user_id()
        cols = list(o.fields)
        derive = o.name in ("Lead", "Contact", "User", "Account", "Group", "Opportunity", "Task", "CampaignMember")
        with self.transaction():
            defaults: dict[str, Any] = {}
            for f in o.fields.values():
                if f.default is not None:
                    defaults[f.name] = (1 if f.default else 0) if f.type == "boolean" else f.default
                elif f.type == "boolean":
                    defaults[f.name] = 0
            defaults.update({"IsDeleted": 0, "CreatedDate": self._stamp, "CreatedById": uid})
            if "SystemModstamp" in o.fields:
                defaults.update({"LastModifiedDate": self._stamp, "LastModifiedById": uid,
                                 "SystemModstamp": self._stamp})
            if o.has_owner:
                defaults["OwnerId"] = uid
            params = []
            first, _ = self._next_id(o)
            self._counters[o.key_prefix] = first + len(rows) - 1
            new_ids = idlib.make_ids(o.key_prefix, first, len(rows))
            for rowid, new_id, r in zip(range(first, first + len(rows)), new_ids, rows, strict=True):
                rec = dict(defaults)
                rec.update(r)
                rec["Id"] = new_id
                if "SystemModstamp" in o.fields and "SystemModstamp" not in r and "LastModifiedDate" in r:
                    rec["SystemModstamp"] = r["LastModifiedDate"]
                if "LastModifiedDate" in o.fields and "LastModifiedDate" not in r and "CreatedDate" in r:
                    rec["LastModifiedDate"] = rec["SystemModstamp"] = r["CreatedDate"]
                if derive:
                    self._derive(o, rec, None)
                params.append([rowid, *map(rec.get, cols)])
            self.db.executemany(
                f'INSERT INTO "{o.table}" (rowid, {", ".join(chr(34) + c + chr(34) for c in cols)}) '
                f'VALUES (?, {", ".join("?" for _ in cols)})', params)
        return new_ids

    # --------------------------------------------------------------------------------------- feeds
    def _feed_rows(self, o: ObjectDef, start: datetime, end: datetime, *, deleted: bool,
                   principal: Principal | None) -> list[tuple]:
        """(Id, SystemModstamp) of the live or deleted records changed in [start, end), as the principal sees them."""
        sql = (f'SELECT "Id", "SystemModstamp" FROM "{o.table}" WHERE "SystemModstamp" >= ? AND '
               f'"SystemModstamp" < ? AND "IsDeleted"=?')
        params: list[Any] = [format_dt(start), format_dt(end), 1 if deleted else 0]
        if principal is not None and not principal.view_all and o.has_owner:
            sql += ' AND "OwnerId"=?'
            params.append(principal.user_id)
        rows = self.db.execute(sql + ' ORDER BY "SystemModstamp" LIMIT 600001', params).fetchall()
        if len(rows) > 600000:
            raise RecordError("EXCEEDED_ID_LIMIT", "too many ids were requested", status=400)
        return rows

    def updated_ids(self, obj: str | ObjectDef, start: datetime, end: datetime,
                    principal: Principal | None) -> dict[str, Any]:
        """``sobjects/{Type}/updated``: ids with SystemModstamp in [start, end) (minutes granularity)."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        start, end, latest = self._feed_window(start, end, days=30)
        rows = self._feed_rows(o, start, end, deleted=False, principal=principal)
        return {"ids": [r[0] for r in rows], "latestDateCovered": format_dt(latest)}

    def deleted_records(self, obj: str | ObjectDef, start: datetime, end: datetime,
                        principal: Principal | None) -> dict[str, Any]:
        """``sobjects/{Type}/deleted``: records soft-deleted in [start, end)."""
        o = obj if isinstance(obj, ObjectDef) else self.require_object(obj)
        start, end, latest = self._feed_window(start, end, days=15)
        rows = self._feed_rows(o, start, end, deleted=True, principal=principal)
        earliest = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=15)
        return {"deletedRecords": [{"id": r[0], "deletedDate": r[1]} for r in rows],
                "earliestDateAvailable": format_dt(earliest), "latestDateCovered": format_dt(latest)}

    @staticmethod
    def _feed_window(start: datetime, end: datetime, days: int) -> tuple[datetime, datetime, datetime]:
        """(query start, query end, latestDateCovered). Seconds are ignored in start/end; when end lies in the
        future everything up to now is returned but latestDateCovered is now rounded down to the minute, so a
        client using it as its next start may see an id twice but never misses one."""
        now = datetime.now(UTC)
        start = start.replace(second=0, microsecond=0)
        end = end.replace(second=0, microsecond=0)
        if end <= start:
            raise RecordError("INVALID_REPLICATION_DATE", "startDate must chronologically precede endDate by more "
                              "than one minute", status=400)
        if start < now - timedelta(days=days):
            raise RecordError("INVALID_REPLICATION_DATE",
                              f"startDate cannot be more than {days} days ago", status=400)
        floor_now = now.replace(second=0, microsecond=0)
        if end <= floor_now:
            return start, end, end
        return start, now + timedelta(days=1), floor_now

    # ------------------------------------------------------------------------------------- queries
    def _reader(self) -> sqlite3.Connection:
        if self._readers:
            return self._readers.pop()
        return self._connect(readonly=True)

    def _release_reader(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error:
            conn.close()
            return
        if len(self._readers) < 4:
            self._readers.append(conn)
        else:
            conn.close()

    def _close_cursor(self, c: _Cursor) -> None:
        self._cursors.pop(c.locator, None)
        if c.cursor is not None:
            with suppress(sqlite3.Error):
                c.cursor.close()
        if c.conn is not None:
            self._release_reader(c.conn)
            c.conn = None

    def _expire_cursors(self) -> None:
        now = time.monotonic()
        for c in list(self._cursors.values()):
            if now - c.touched > self.CURSOR_IDLE_SECONDS:
                self._close_cursor(c)
        while len(self._cursors) >= self.MAX_CURSORS:
            oldest = min(self._cursors.values(), key=lambda c: c.touched)
            self._close_cursor(oldest)

    def query(self, soql: str, principal: Principal | None, *, include_deleted: bool = False,
              batch_size: int = 2000, api_version: str = "59.0") -> dict[str, Any]:
        """Run SOQL; returns the first page ``{"totalSize", "done", ["nextRecordsUrl"], "records"}``.

        Raises ``SoqlError`` for bad queries. Further pages come from :meth:`query_more` with the locator
        and offset of ``nextRecordsUrl``; the query sees one consistent snapshot across pages.
        """
        from crmsandbox.soql import SoqlError, compile_query, parse

        owner = principal.user_id if principal is not None and not principal.view_all else None
        try:
            compiled = compile_query(parse(soql), self.soql_schema, include_deleted=include_deleted,
                                     owner_id=owner, api_version=api_version, now=datetime.now(UTC))
        except SoqlError:
            raise
        except Exception as e:  # an engine bug must not become a 500: answer like a bad query
            log.warning("SOQL engine failed on %r: %r", soql[:200], e)
            raise SoqlError("MALFORMED_QUERY", f"unable to parse query: {type(e).__name__}") from None
        self._expire_cursors()
        uid = principal.user_id if principal else ""
        if self._depth:
            # inside a write transaction (composite allOrNone): read our own uncommitted writes
            total = self.db.execute(compiled.count_sql, compiled.count_params).fetchone()[0]
            if compiled.is_count:
                return {"totalSize": total, "done": True, "records": []}
            rows = self.db.execute(compiled.select_sql, compiled.params).fetchall()
            state = _Cursor(locator="", conn=None, cursor=None, compiled=compiled, user_id=uid, total=total,
                            batch_size=batch_size, buffer=rows, exhausted=True, touched=time.monotonic())
            return self._first_page(state, api_version)
        conn = self._reader()
        ok = False
        try:
            conn.execute("BEGIN")
            # COUNT(*) is O(rows): reuse it while nothing was written (by us or, via data_version, anyone else)
            key = (compiled.count_sql, tuple(compiled.count_params), self._write_gen,
                   self.db.execute("PRAGMA data_version").fetchone()[0])
            total = self._count_cache.get(key)
            if total is None:
                total = conn.execute(compiled.count_sql, compiled.count_params).fetchone()[0]
                if len(self._count_cache) > 256:
                    self._count_cache.clear()
                self._count_cache[key] = total
            if compiled.is_count:
                return {"totalSize": total, "done": True, "records": []}
            cur = conn.execute(compiled.select_sql, compiled.params)
            state = _Cursor(locator="", conn=conn, cursor=cur, compiled=compiled, user_id=uid, total=total,
                            batch_size=batch_size, touched=time.monotonic())
            page = self._first_page(state, api_version)
            ok = not page["done"]
            if not ok:
                cur.close()
            return page
        finally:
            if not ok:
                self._release_reader(conn)

    def _first_page(self, state: _Cursor, api_version: str) -> dict[str, Any]:
        page = self._page(state, api_version)
        if not page["done"]:
            state.locator = idlib.to18("01g" + "".join(secrets.choice(idlib._BASE62) for _ in range(12)))
            page["nextRecordsUrl"] = f"/services/data/v{api_version}/query/{state.locator}-{state.pos}"
            state.last_page = page
            self._cursors[state.locator] = state
        return page

    def _page(self, state: _Cursor, api_version: str) -> dict[str, Any]:
        rows = state.buffer
        need = state.batch_size + 1 - len(rows)
        if need > 0 and not state.exhausted and state.cursor is not None:
            more = state.cursor.fetchmany(need)
            if len(more) < need:
                state.exhausted = True
            rows = rows + more
        page_rows, state.buffer = rows[:state.batch_size], rows[state.batch_size:]
        state.last_offset = state.pos
        state.pos += len(page_rows)
        records = [state.compiled.row_to_record(r) for r in page_rows]
        done = not state.buffer
        return {"totalSize": state.total, "done": done, "records": records}

    def query_more(self, locator: str, offset: int, principal: Principal | None,
                   api_version: str = "59.0") -> dict[str, Any]:
        """Next page of an open query (``nextRecordsUrl``). The last page served can be fetched again."""
        self._expire_cursors()
        fin = self._finished.get(locator)
        if fin is not None and fin[0] == offset:
            return fin[1]
        state = self._cursors.get(locator)
        if state is None or (principal is not None and state.user_id != principal.user_id):
            raise RecordError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
        state.touched = time.monotonic()
        if offset == state.last_offset and state.last_page is not None:
            return state.last_page
        if offset < state.pos:
            raise RecordError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
        while offset > state.pos:  # skip forward
            skip = min(offset - state.pos, 10000)
            rows = state.buffer
            if len(rows) < skip and not state.exhausted and state.cursor is not None:
                more = state.cursor.fetchmany(skip - len(rows))
                if len(more) < skip - len(rows):
                    state.exhausted = True
                rows = rows + more
            if not rows:
                break
            state.buffer = rows[skip:]
            state.pos += min(skip, len(rows))
        page = self._page(state, api_version)
        if page["done"]:
            self._close_cursor(state)
            # keep the final page replayable for a retry of the same URL
            self._finished[locator] = (state.last_offset, page)
            while len(self._finished) > self.MAX_CURSORS:
                self._finished.pop(next(iter(self._finished)))
        else:
            page["nextRecordsUrl"] = f"/services/data/v{api_version}/query/{locator}-{state.pos}"
            state.last_page = page
        return page

    # ------------------------------------------------------------------------------------ change log
    def changes(self, since: int = 0, limit: int = 1000, object_name: str | None = None) -> list[dict[str, Any]]:
        """Change-log entries with ``seq > since`` (oldest first): every API write with the acting user and
        the ``Sforce-Call-Options`` client id."""
        sql = "SELECT seq, stamp, object, record_id, change_type, user_id, client, fields FROM _changes WHERE seq > ?"
        params: list[Any] = [since]
        if object_name:
            sql += " AND object = ?"
            params.append(object_name)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [{"seq": r[0], "stamp": r[1], "object": r[2], "recordId": r[3], "changeType": r[4],
                 "userId": r[5], "client": r[6], "fields": json.loads(r[7] or "[]")}
                for r in self.db.execute(sql, params)]

    # ------------------------------------------------------------------------------ users & auth data
    def admin_user_id(self) -> str:
        uid = self.config.get("admin_user_id")
        if uid:
            return uid
        row = self.db.execute('SELECT "Id" FROM "sobj_User" ORDER BY rowid LIMIT 1').fetchone()
        return row[0] if row else idlib.make_id("005", 0)

    def principal_for_user(self, user_id: str) -> Principal | None:
        p = self._principals.get(user_id)
        if p is not None:
            return p
        row = self.db.execute(
            'SELECT u."Id", u."Username", p."Name", p."PermissionsViewAllData", p."PermissionsModifyAllData", '
            'u."IsActive" FROM "sobj_User" u LEFT JOIN "sobj_Profile" p ON p."Id" = u."ProfileId" WHERE u."Id"=?',
            (user_id,)).fetchone()
        if row is None or not row[5]:
            return None
        p = Principal(row[0], row[1], row[2] or "", bool(row[3]), bool(row[4]))
        self._principals[user_id] = p
        return p

    def user_by_username(self, username: str) -> str | None:
        row = self.db.execute('SELECT "Id" FROM "sobj_User" WHERE "Username" = ? COLLATE NOCASE AND "IsDeleted"=0',
                              (username,)).fetchone()
        return row[0] if row else None

    def create_profile(self, name: str, view_all: bool) -> str:
        return self.bulk_insert("Profile", [{"Name": name, "PermissionsViewAllData": int(view_all),
                                             "PermissionsModifyAllData": int(view_all)}])[0]

    def profile_id(self, name: str) -> str | None:
        row = self.db.execute('SELECT "Id" FROM "sobj_Profile" WHERE "Name"=?', (name,)).fetchone()
        return row[0] if row else None

    def create_user(self, username: str, password: str | None, *, first_name: str, last_name: str,
                    email: str, profile: str) -> str:
        """Create an active user with a profile (by name) and optional password."""
        pid = self.profile_id(profile)
        if pid is None:
            pid = self.create_profile(profile, profile in VIEW_ALL_PROFILES)
        uid = self.create("User", {"Username": username, "FirstName": first_name, "LastName": last_name,
                                   "Email": email, "ProfileId": pid}, None, None, system=True)
        if password is not None:
            self.set_password(uid, password)
        return uid

    def set_password(self, user_id: str, password: str) -> None:
        salt = secrets.token_hex(16)
        h = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 20000).hex()
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO _credentials (user_id, salt, hash) VALUES (?,?,?)",
                            (user_id, salt, h))

    def check_password(self, user_id: str, password: str) -> bool:
        row = self.db.execute("SELECT salt, hash FROM _credentials WHERE user_id=?", (user_id,)).fetchone()
        if row is None:
            return False
        h = hashlib.pbkdf2_hmac("sha256", password.encode(), row[0].encode(), 20000).hex()
        return hmac.compare_digest(h, row[1])

    def add_app(self, name: str, cert_pem: str | None, run_as_user_id: str | None) -> dict[str, str]:
        """Register a connected app; returns ``{"consumer_key", "consumer_secret"}``."""
        key = "3MVG9" + secrets.token_urlsafe(60).replace("-", "A").replace("_", "z")[:80]
        secret = "".join(secrets.choice("0123456789ABCDEF") for _ in range(64))
        with self.transaction():
            self.db.execute("INSERT INTO _apps VALUES (?,?,?,?,?,?)",
                            (key, secret, name, cert_pem, run_as_user_id, self._stamp))
        return {"consumer_key": key, "consumer_secret": secret}

    def app(self, consumer_key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT consumer_key, consumer_secret, name, cert_pem, run_as_user_id FROM _apps "
                              "WHERE consumer_key=?", (consumer_key,)).fetchone()
        if row is None:
            return None
        return {"consumer_key": row[0], "consumer_secret": row[1], "name": row[2], "cert_pem": row[3],
                "run_as_user_id": row[4]}

    def issue_token(self, user_id: str, consumer_key: str, kind: str = "access",
                    ttl: float | None = None) -> str:
        """A new access (or refresh) token for a user; access tokens expire after the org's session TTL."""
        org15 = self.org_id[:15]
        token = f"{org15}!" + secrets.token_urlsafe(72 if kind == "access" else 48)
        now = time.time()
        if ttl is None:
            ttl = float(self.config.get("session_ttl_seconds", 7200)) if kind == "access" else 10 * 365 * 86400.0
        with self.transaction():
            self.db.execute("INSERT INTO _tokens VALUES (?,?,?,?,?,?)",
                            (token, kind, user_id, consumer_key, now, now + ttl))
        if kind == "access":
            self._tokens[token] = (user_id, now + ttl, consumer_key)
        return token

    def token_info(self, token: str, kind: str = "access") -> tuple[str, str] | None:
        """``(user_id, consumer_key)`` for a live token, else None."""
        hit = self._tokens.get(token) if kind == "access" else None
        if hit is None:
            row = self.db.execute("SELECT user_id, expires_at, consumer_key FROM _tokens WHERE token=? AND kind=?",
                                  (token, kind)).fetchone()
            if row is None:
                return None
            hit = (row[0], row[1], row[2])
            if kind == "access":
                self._tokens[token] = hit
        if hit[1] < time.time():
            return None
        return hit[0], hit[2]

    def expire_tokens(self, user_id: str | None = None) -> int:
        """Expire all access tokens (of one user); returns how many. Used by tests and the admin endpoint."""
        with self.transaction():
            if user_id:
                cur = self.db.execute("UPDATE _tokens SET expires_at=0 WHERE kind='access' AND user_id=?", (user_id,))
            else:
                cur = self.db.execute("UPDATE _tokens SET expires_at=0 WHERE kind='access'")
        self._tokens.clear()
        return cur.rowcount

    # --------------------------------------------------------------------------------------- usage
    def _load_usage(self) -> None:
        cutoff = int(time.time() // 60) - 1440
        for minute, n in self.db.execute("SELECT minute, n FROM _api_usage WHERE minute > ?", (cutoff,)):
            self._usage[minute] = n
            self._usage_total += n

    def _prune_usage(self) -> None:
        cutoff = int(time.time() // 60) - 1440
        for m in [m for m in self._usage if m <= cutoff]:
            self._usage_total -= self._usage.pop(m)

    @property
    def daily_api_limit(self) -> int:
        if self.daily_api_limit_override is not None:
            return self.daily_api_limit_override
        return int(self.config.get("daily_api_limit", 15000))

    def api_usage(self) -> tuple[int, int]:
        """``(used in the last 24 h, daily limit)``."""
        self._prune_usage()
        return self._usage_total, self.daily_api_limit

    def count_api_call(self) -> tuple[int, int]:
        """Count one API call; raises REQUEST_LIMIT_EXCEEDED (403) when the rolling-day allowance is used."""
        used, limit = self.api_usage()
        if used >= limit:
            raise RecordError("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", status=403)
        minute = int(time.time() // 60)
        self._usage[minute] = self._usage.get(minute, 0) + 1
        self._usage_total += 1
        self._usage_dirty = True
        self.flush_usage()
        return used + 1, limit

    def reset_usage(self) -> None:
        self._usage.clear()
        self._usage_total = 0
        self.db.execute("DELETE FROM _api_usage")

    def flush_usage(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._usage_dirty or (not force and now - self._usage_flushed < 2.0) or self._depth:
            return
        self._usage_flushed = now
        cutoff = int(time.time() // 60) - 1440
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return  # busy (e.g. a seed is writing): try again later
        finally:
            self.db.execute("PRAGMA busy_timeout=5000")
        try:
            self.db.execute("DELETE FROM _api_usage WHERE minute <= ?", (cutoff,))
            self.db.executemany("INSERT OR REPLACE INTO _api_usage VALUES (?,?)", list(self._usage.items()))
            self.db.execute("COMMIT")
            self._usage_dirty = False
        except sqlite3.Error:
            self.db.execute("ROLLBACK")

    def counts(self) -> dict[str, int]:
        """Live record counts per object (for ``info`` and the UI)."""
        return {o.name: self.db.execute(f'SELECT COUNT(*) FROM "{o.table}" WHERE "IsDeleted"=0').fetchone()[0]
                for o in self.registry.objects.values()}


def _match_pick(values: tuple[str, ...], v: str) -> str | None:
    if v in values:
        return v
    lv = v.lower()
    for x in values:
        if x.lower() == lv:
            return x
    return None


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, str):
        return "VALUE_STRING"
    if isinstance(value, (int, float)):
        return "VALUE_NUMBER_INT" if isinstance(value, int) else "VALUE_NUMBER_FLOAT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, dict):
        return "START_OBJECT"
    return "VALUE_NULL"


def _db_to_json(o: ObjectDef, vals: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in vals.items():
        f = o.fields.get(k)
        if f is not None and f.type == "boolean" and v is not None:
            v = bool(v)
        out[k] = v
    return out


def chunked(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk
