"""Bulk API 2.0 (``/services/data/vXX.X/jobs/ingest`` and ``jobs/query``).

Mounted on :data:`crmsandbox.api.ROUTER` by :func:`mount` (called by the server at start-up), so every bulk
HTTP call is authenticated, counted as an API call and fault-injected like the REST API.

* Ingest jobs: create (``Open``) → upload CSV (``PUT .../batches``, 201) → ``PATCH {"state":"UploadComplete"}``
  → processed in the background (``InProgress`` → ``JobComplete``; ``Failed`` when the CSV header is unusable)
  in chunks of :data:`CHUNK_ROWS` rows, each chunk one store transaction with a savepoint per row, yielding to
  the event loop between chunks so the server stays responsive. Per-row results land in SQLite and are served as
  ``successfulResults/``, ``failedResults/`` and ``unprocessedrecords/``.
* Query jobs: created ``UploadComplete``; the SOQL runs through the sandbox's engine in the background and the
  CSV rows are stored in chunks; ``results?maxRecords=&locator=`` pages them with ``Sforce-Locator`` /
  ``Sforce-NumberOfRecords`` headers.

Jobs live in the org's SQLite database (tables ``_bulk_jobs``, ``_bulk_uploads``, ``_bulk_results``,
``_bulk_query_rows``, ``_bulk_usage``), so a restarted server still answers job status and results. A job that
was ``UploadComplete`` or ``InProgress`` when the server stopped is resumed when the bulk API is next used (an
ingest job continues after the last committed chunk — every chunk commits its results together with the job's
progress — and a query job is re-run from the start).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crmsandbox import api
from crmsandbox import ids as idlib
from crmsandbox.errors import ApiError, RecordError, RecordErrors, not_found
from crmsandbox.http import Request, Response
from crmsandbox.store import Principal, Store
from crmsandbox.timeutil import format_dt

if TYPE_CHECKING:
    from crmsandbox.server import SandboxServer

log = logging.getLogger("crmsandbox.bulk")

JOB_PREFIX = "750"
CHUNK_ROWS = 200  # ingest rows per transaction (then the event loop gets a turn)
QUERY_CHUNK = 2000  # query result rows per stored chunk
BATCH_RECORDS = 10_000  # DailyBulkApiBatches counts one batch per 10,000 ingested records
DAILY_BATCHES = 15_000
DAILY_QUERY_JOBS = 10_000
DEFAULT_MAX_RECORDS = 50_000
MAX_UPLOAD_BYTES = 150 * 1024 * 1024
CSV_CT = "text/csv"
DELIMITERS = {"COMMA": ",", "BACKQUOTE": "`", "CARET": "^", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
INGEST_OPS = ("insert", "update", "upsert", "delete", "hardDelete")
QUERY_OPS = ("query", "queryAll")
TERMINAL = ("JobComplete", "Failed", "Aborted")
NULL_TOKEN = "#N/A"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS _bulk_jobs (id TEXT PRIMARY KEY, kind TEXT, user_id TEXT, state TEXT, "
    "info TEXT, soql TEXT, columns TEXT, processed_upto INTEGER DEFAULT 0, total_rows INTEGER DEFAULT 0, "
    "created REAL)",
    "CREATE TABLE IF NOT EXISTS _bulk_uploads (job_id TEXT, seq INTEGER, data BLOB, PRIMARY KEY (job_id, seq))",
    "CREATE TABLE IF NOT EXISTS _bulk_results (job_id TEXT, seq INTEGER, ok INTEGER, line TEXT, "
    "PRIMARY KEY (job_id, seq))",
    "CREATE TABLE IF NOT EXISTS _bulk_query_rows (job_id TEXT, chunk INTEGER, nrows INTEGER, lines TEXT, "
    "PRIMARY KEY (job_id, chunk))",
    "CREATE TABLE IF NOT EXISTS _bulk_usage (ts REAL, kind TEXT, n INTEGER)",
)


def _now() -> str:
    return format_dt(datetime.now(UTC))


def _job_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, code, message)


def _csv_text(values: list[str], delimiter: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="", quoting=csv.QUOTE_MINIMAL).writerow(values)
    return buf.getvalue()


def _quoted(values: list[str], delimiter: str) -> str:
    return delimiter.join('"' + v.replace('"', '""') + '"' for v in values)


def _locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def _offset(locator: str) -> int:
    try:
        raw = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
        n = int(raw)
    except (ValueError, UnicodeDecodeError):
        raise _job_error(400, "INVALIDLOCATOR", f"Invalid locator: {locator}") from None
    if n < 0:
        raise _job_error(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
    return n


def _format_value(value: Any, ftype: str) -> str:
    if value is None:
        return ""
    if ftype == "boolean":
        return "true" if value else "false"
    if ftype == "int":
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(value)
    return str(value)


def _error_text(e: RecordError | RecordErrors | ApiError) -> str:
    if isinstance(e, ApiError):
        return f"{e.code}:{e.message}:{','.join(e.fields or [])} --"
    errs = e.errors if isinstance(e, RecordErrors) else [e]
    return "; ".join(f"{x.code}:{x.message}:{','.join(x.fields)} --" for x in errs)


class BulkService:
    """Per-server Bulk API 2.0 state: job persistence, the background worker, usage counters."""

    def __init__(self, server: SandboxServer):
        self.server = server
        self.store: Store = server.store
        db = self.store.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for ddl in _SCHEMA:
                db.execute(ddl)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._seq = db.execute("SELECT COUNT(*) FROM _bulk_jobs").fetchone()[0]
        self._queue: list[str] = [r[0] for r in db.execute(
            "SELECT id FROM _bulk_jobs WHERE state IN ('UploadComplete', 'InProgress') ORDER BY created")]
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------ persistence
    def _new_id(self) -> str:
        while True:
            self._seq += 1
            jid = idlib.make_id(JOB_PREFIX, self._seq)
            if self.store.db.execute("SELECT 1 FROM _bulk_jobs WHERE id=?", (jid,)).fetchone() is None:
                return jid

    def _load(self, job_id: str, principal: Principal | None, kind: str) -> dict[str, Any]:
        norm = idlib.normalize(job_id)
        row = self.store.db.execute(
            "SELECT info, user_id, kind, soql, columns, processed_upto, total_rows FROM _bulk_jobs WHERE id=?",
            (norm,)).fetchone() if norm else None
        if row is None or row[2] != kind or (principal is not None and not principal.view_all
                                             and row[1] != principal.user_id):
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        info = json.loads(row[0])
        info["_soql"] = row[3]
        info["_columns"] = json.loads(row[4]) if row[4] else None
        info["_processed_upto"] = row[5]
        info["_total_rows"] = row[6]
        return info

    def _save(self, info: dict[str, Any], **extra: Any) -> None:
        public = {k: v for k, v in info.items() if not k.startswith("_")}
        sets = ["info=?", "state=?"]
        params: list[Any] = [json.dumps(public), info["state"]]
        for k, v in extra.items():
            sets.append(f"{k}=?")
            params.append(v)
        params.append(info["id"])
        self.store.db.execute(f"UPDATE _bulk_jobs SET {', '.join(sets)} WHERE id=?", params)

    def _count_usage(self, kind: str, n: int) -> None:
        self.store.db.execute("INSERT INTO _bulk_usage VALUES (?,?,?)", (time.time(), kind, n))

    def usage(self, kind: str) -> int:
        row = self.store.db.execute("SELECT COALESCE(SUM(n), 0) FROM _bulk_usage WHERE kind=? AND ts > ?",
                                    (kind, time.time() - 86400)).fetchone()
        return int(row[0])

    def limits(self, ctx: api.Ctx) -> dict[str, dict[str, int]]:
        batches = self.usage("batch")
        queries = self.usage("query")
        return {"DailyBulkApiBatches": {"Max": DAILY_BATCHES, "Remaining": max(0, DAILY_BATCHES - batches)},
                "DailyBulkV2QueryJobs": {"Max": DAILY_QUERY_JOBS,
                                         "Remaining": max(0, DAILY_QUERY_JOBS - queries)}}

    # ----------------------------------------------------------------------------------------- public
    @staticmethod
    def public(info: dict[str, Any], full: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in info.items() if not k.startswith("_")}
        if not full:
            for k in ("numberRecordsProcessed", "numberRecordsFailed", "retries", "totalProcessingTime",
                      "apiActiveProcessingTime", "apexProcessingTime", "errorMessage", "jobType"):
                out.pop(k, None)
        elif out.get("errorMessage") is None:
            out.pop("errorMessage", None)
        return out

    # ----------------------------------------------------------------------------------- ingest jobs
    def create_ingest(self, ctx: api.Ctx, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _job_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of job from START_ARRAY value")
        op = body.get("operation")
        if op not in INGEST_OPS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {op}")
        obj_name = body.get("object")
        o = self.store.object(obj_name) if isinstance(obj_name, str) else None
        if o is None:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Unable to find object: {obj_name}")
        ext = body.get("externalIdFieldName")
        if op == "upsert":
            if not ext:
                raise _job_error(400, "INVALIDJOB", "InvalidJob : External ID was blank for upsert")
            f = o.lookup(str(ext))
            if f is None or not (f.external_id or f.id_lookup or f.name == "Id"):
                raise _job_error(400, "INVALIDJOB", f"InvalidJob : Field {ext} is not an external id field "
                                 f"on {o.name}")
            ext = f.name
        content_type = body.get("contentType", "CSV")
        if content_type != "CSV":
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Unsupported content type: {content_type}")
        line_ending = body.get("lineEnding", "LF")
        if line_ending not in LINE_ENDINGS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid line ending: {line_ending}")
        delim = body.get("columnDelimiter", "COMMA")
        if delim not in DELIMITERS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid column delimiter: {delim}")
        if self.usage("batch") >= DAILY_BATCHES:
            raise _job_error(400, "LIMIT_EXCEEDED", "Exceeded max limit of concurrent or daily batches")
        jid = self._new_id()
        stamp = _now()
        info: dict[str, Any] = {
            "id": jid, "operation": op, "object": o.name, "createdById": ctx.principal.user_id,
            "createdDate": stamp, "systemModstamp": stamp, "state": "Open",
        }
        if ext:
            info["externalIdFieldName"] = ext
        info.update({
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(ctx.version),
            "contentUrl": f"services/data/v{ctx.version}/jobs/ingest/{jid}/batches", "lineEnding": line_ending,
            "columnDelimiter": delim, "jobType": "V2Ingest", "numberRecordsProcessed": 0,
            "numberRecordsFailed": 0, "retries": 0, "totalProcessingTime": 0, "apiActiveProcessingTime": 0,
            "apexProcessingTime": 0, "errorMessage": None,
        })
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO _bulk_jobs (id, kind, user_id, state, info, created) VALUES (?,?,?,?,?,?)",
                (jid, "ingest", ctx.principal.user_id, "Open", json.dumps(info), time.time()))
        return info

    def upload(self, ctx: api.Ctx, job_id: str, req: Request) -> None:
        info = self._load(job_id, ctx.principal, "ingest")
        if info["state"] != "Open":
            raise _job_error(409, "INVALIDJOBSTATE",
                             f"Job's state ({info['state']}) doesn't allow uploading data; it must be Open")
        ctype = req.headers.get("content-type", "")
        if ctype and "csv" not in ctype.lower():
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Unsupported content type: {ctype}")
        if not req.body.strip():
            raise _job_error(400, "INVALIDJOB", "InvalidJob : No content uploaded")
        db = self.store.db
        size = db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM _bulk_uploads WHERE job_id=?",
                          (info["id"],)).fetchone()[0]
        if size + len(req.body) > MAX_UPLOAD_BYTES:
            raise _job_error(400, "INVALIDJOB", "InvalidJob : Job data exceeds the maximum size of 150 MB")
        with self.store.transaction():
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM _bulk_uploads WHERE job_id=?",
                             (info["id"],)).fetchone()[0]
            db.execute("INSERT INTO _bulk_uploads VALUES (?,?,?)", (info["id"], seq, req.body))

    def set_state(self, ctx: api.Ctx, job_id: str, kind: str, body: Any) -> dict[str, Any]:
        info = self._load(job_id, ctx.principal, kind)
        new = body.get("state") if isinstance(body, dict) else None
        cur = info["state"]
        if new == "UploadComplete" and kind == "ingest":
            if cur != "Open":
                raise _job_error(409, "INVALIDJOBSTATE", f"Job's state ({cur}) can't be changed to UploadComplete")
            info["state"] = "UploadComplete"
        elif new == "Aborted":
            if cur in TERMINAL:
                raise _job_error(409, "INVALIDJOBSTATE", f"Job's state ({cur}) can't be changed to Aborted")
            info["state"] = "Aborted"
        else:
            raise _job_error(400, "INVALIDJOBSTATE", f"Invalid state: {new}")
        info["systemModstamp"] = _now()
        with self.store.transaction():
            self._save(info)
        if info["state"] == "UploadComplete":
            self._enqueue(info["id"])
        return info

    def delete_job(self, ctx: api.Ctx, job_id: str, kind: str) -> None:
        info = self._load(job_id, ctx.principal, kind)
        allowed = ("UploadComplete", *TERMINAL) if kind == "ingest" else TERMINAL
        if info["state"] not in allowed:
            raise _job_error(409, "INVALIDJOBSTATE", f"Job's state ({info['state']}) doesn't allow deleting it")
        jid = info["id"]
        with self.store.transaction():
            for t in ("_bulk_uploads", "_bulk_results", "_bulk_query_rows"):
                self.store.db.execute(f"DELETE FROM {t} WHERE job_id=?", (jid,))
            self.store.db.execute("DELETE FROM _bulk_jobs WHERE id=?", (jid,))
        if jid in self._queue:
            self._queue.remove(jid)

    def list_jobs(self, ctx: api.Ctx, kind: str) -> dict[str, Any]:
        sql = "SELECT info FROM _bulk_jobs WHERE kind=?"
        params: list[Any] = [kind]
        if not ctx.principal.view_all:
            sql += " AND user_id=?"
            params.append(ctx.principal.user_id)
        recs = [self.public(json.loads(r[0]), full=False) for r in
                self.store.db.execute(sql + " ORDER BY created", params)]
        return {"done": True, "records": recs, "nextRecordsUrl": None}

    def ingest_results(self, ctx: api.Ctx, job_id: str, which: str) -> bytes:
        info = self._load(job_id, ctx.principal, "ingest")
        delim = DELIMITERS[info["columnDelimiter"]]
        nl = LINE_ENDINGS[info["lineEnding"]]
        columns: list[str] = info["_columns"] or []
        db = self.store.db
        if which == "unprocessedrecords":
            if info["state"] in ("Open", "Aborted", "Failed"):
                header, data = self._parse(info)
                start = 0 if info["state"] == "Open" else int(info["_processed_upto"])
                lines = [_csv_text(header, delim)] + [_csv_text(r, delim) for r in data[start:]] if header else []
            else:
                lines = [_csv_text(columns, delim)] if columns else []
            return (nl.join(lines) + nl).encode() if lines else b""
        ok = 1 if which == "successfulResults" else 0
        head = ["sf__Id", "sf__Created"] if ok else ["sf__Id", "sf__Error"]
        out = [_quoted(head, delim) + (delim + _csv_text(columns, delim) if columns else "")]
        out += [r[0] for r in db.execute("SELECT line FROM _bulk_results WHERE job_id=? AND ok=? ORDER BY seq",
                                         (info["id"], ok))]
        return (nl.join(out) + nl).encode()

    # ------------------------------------------------------------------------------------ query jobs
    def create_query(self, ctx: api.Ctx, body: Any) -> dict[str, Any]:
        from crmsandbox.soql import SoqlError, compile_query, parse

        if not isinstance(body, dict):
            raise _job_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of job from START_ARRAY value")
        op = body.get("operation", "query")
        if op not in QUERY_OPS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {op}")
        soql = body.get("query")
        if not isinstance(soql, str) or not soql.strip():
            raise _job_error(400, "INVALIDJOB", "InvalidJob : Query is required")
        line_ending = body.get("lineEnding", "LF")
        delim = body.get("columnDelimiter", "COMMA")
        if line_ending not in LINE_ENDINGS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid line ending: {line_ending}")
        if delim not in DELIMITERS:
            raise _job_error(400, "INVALIDJOB", f"InvalidJob : Invalid column delimiter: {delim}")
        if body.get("contentType", "CSV") != "CSV":
            raise _job_error(400, "INVALIDJOB", "InvalidJob : Unsupported content type")
        try:
            compiled = compile_query(parse(soql), self.store.soql_schema, include_deleted=op == "queryAll",
                                     owner_id=None, api_version=ctx.version, now=datetime.now(UTC))
        except SoqlError as e:
            raise ApiError(400, e.error_code, e.message) from None
        if compiled.is_count:
            raise _job_error(400, "INVALIDJOB", "InvalidJob : Aggregate queries are not supported by Bulk API "
                             "2.0 query jobs")
        if self.usage("query") >= DAILY_QUERY_JOBS:
            raise _job_error(400, "LIMIT_EXCEEDED", "Exceeded the daily limit of Bulk API 2.0 query jobs")
        jid = self._new_id()
        stamp = _now()
        info: dict[str, Any] = {
            "id": jid, "operation": op, "object": compiled.object.name, "createdById": ctx.principal.user_id,
            "createdDate": stamp, "systemModstamp": stamp, "state": "UploadComplete", "concurrencyMode": "Parallel",
            "contentType": "CSV", "apiVersion": float(ctx.version), "jobType": "V2Query", "lineEnding": line_ending,
            "columnDelimiter": delim, "numberRecordsProcessed": 0, "retries": 0, "totalProcessingTime": 0,
            "errorMessage": None,
        }
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO _bulk_jobs (id, kind, user_id, state, info, soql, created) VALUES (?,?,?,?,?,?,?)",
                (jid, "query", ctx.principal.user_id, "UploadComplete", json.dumps(info), soql, time.time()))
            self._count_usage("query", 1)
        self._enqueue(jid)
        return info

    def query_results(self, ctx: api.Ctx, job_id: str, req: Request) -> Response:
        info = self._load(job_id, ctx.principal, "query")
        if info["state"] != "JobComplete":
            raise _job_error(400, "INVALIDJOBSTATE", f"Job's state ({info['state']}) doesn't allow getting "
                             "results; it must be JobComplete")
        try:
            max_records = int(req.query.get("maxRecords") or DEFAULT_MAX_RECORDS)
        except ValueError:
            raise _job_error(400, "INVALIDJOB", "maxRecords must be a number") from None
        if max_records <= 0:
            raise _job_error(400, "INVALIDJOB", "maxRecords must be greater than 0")
        loc = req.query.get("locator") or ""
        start = _offset(loc) if loc and loc != "null" else 0
        total = int(info["_total_rows"])
        if start > total:
            raise _job_error(400, "INVALIDLOCATOR", f"Invalid locator: {loc}")
        end = min(total, start + max_records)
        delim = DELIMITERS[info["columnDelimiter"]]
        nl = LINE_ENDINGS[info["lineEnding"]]
        lines = [_csv_text(info["_columns"] or [], delim)]
        if end > start:
            first, last = start // QUERY_CHUNK, (end - 1) // QUERY_CHUNK
            for chunk, data in self.store.db.execute(
                    "SELECT chunk, lines FROM _bulk_query_rows WHERE job_id=? AND chunk BETWEEN ? AND ? "
                    "ORDER BY chunk", (info["id"], first, last)):
                base = chunk * QUERY_CHUNK
                rows = json.loads(data)
                lo, hi = max(start - base, 0), min(end - base, len(rows))
                lines += rows[lo:hi]
        body = (nl.join(lines) + nl).encode()
        headers = {"Sforce-Locator": _locator(end) if end < total else "null",
                   "Sforce-NumberOfRecords": str(end - start)}
        return Response(200, body, headers, content_type=CSV_CT + ";charset=UTF-8")

    # ------------------------------------------------------------------------------------- processing
    def _enqueue(self, job_id: str) -> None:
        if job_id not in self._queue:
            self._queue.append(job_id)
        self.ensure_worker()

    def ensure_worker(self) -> None:
        """Start the background worker (needs the running event loop: called from request handlers)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._worker())
        if self._queue:
            self._wakeup.set()

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            while self._queue:
                jid = self._queue[0]
                try:
                    await self._process(jid)
                except Exception:
                    log.exception("bulk job %s failed", jid)
                    self._fail(jid, "InternalServerError : an unexpected error occurred")
                if self._queue and self._queue[0] == jid:
                    self._queue.pop(0)
            self._wakeup.clear()
            await self._wakeup.wait()

    def _fail(self, jid: str, message: str) -> None:
        with self.store.transaction():
            row = self.store.db.execute("SELECT info FROM _bulk_jobs WHERE id=?", (jid,)).fetchone()
            if row is None:
                return
            info = json.loads(row[0])
            if info["state"] in TERMINAL:
                return
            info.update({"state": "Failed", "errorMessage": message, "systemModstamp": _now()})
            self._save(info)

    async def _process(self, jid: str) -> None:
        row = self.store.db.execute("SELECT kind FROM _bulk_jobs WHERE id=?", (jid,)).fetchone()
        if row is None:
            return
        if row[0] == "ingest":
            await self._process_ingest(jid)
        else:
            await self._process_query(jid)

    def _parse(self, info: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        data = b"".join(r[0] for r in self.store.db.execute(
            "SELECT data FROM _bulk_uploads WHERE job_id=? ORDER BY seq", (info["id"],)))
        text = data.decode("utf-8-sig", "replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[info["columnDelimiter"]])
        header: list[str] = []
        rows: list[list[str]] = []
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip() and not header):
                continue
            if not header:
                header = [h.strip() for h in rec]
                continue
            if rec == header:  # a later upload repeats the header row
                continue
            if len(rec) == 1 and rec[0] == "":
                continue
            rows.append(rec)
        return header, rows

    def _owner(self, info: dict[str, Any]) -> Principal | None:
        return self.store.principal_for_user(info["createdById"])

    async def _process_ingest(self, jid: str) -> None:
        store = self.store
        info = self._load(jid, None, "ingest")
        if info["state"] not in ("UploadComplete", "InProgress"):
            return
        t0 = time.monotonic()
        header, rows = self._parse(info)
        o = store.require_object(info["object"])
        op = info["operation"]
        principal = self._owner(info)
        error = None
        if principal is None:
            error = "InvalidUser : the job's user is inactive"
        elif not header:
            error = "InvalidBatch : No data found in the uploaded content"
        else:
            unknown = [h for h in header if o.lookup(h) is None]
            if unknown:
                error = f"InvalidBatch : Field name not found : {unknown[0]}"
            elif op in ("update", "delete", "hardDelete") and not any(h.lower() == "id" for h in header):
                error = "InvalidBatch : Field name not found : Id"
            elif op in ("delete", "hardDelete") and len(header) != 1:
                error = "InvalidBatch : The 'delete' batch must contain only 'Id'"
            elif op == "upsert" and not any(h.lower() == info["externalIdFieldName"].lower() for h in header):
                error = f"InvalidBatch : Field name not found : {info['externalIdFieldName']}"
        if error is not None:
            info.update({"state": "Failed", "errorMessage": error, "systemModstamp": _now()})
            with store.transaction():
                self._save(info, columns=json.dumps(header), total_rows=len(rows))
            return
        fields = [o.lookup(h) for h in header]
        canon = [f.name if f is not None else h for f, h in zip(fields, header, strict=True)]
        delim = DELIMITERS[info["columnDelimiter"]]
        if info["state"] == "UploadComplete":
            info.update({"state": "InProgress", "systemModstamp": _now()})
            with store.transaction():
                self._save(info, columns=json.dumps(header), total_rows=len(rows))
                self._count_usage("batch", max(1, math.ceil(len(rows) / BATCH_RECORDS)))
        pos = int(info["_processed_upto"])
        ext = info.get("externalIdFieldName")
        while pos < len(rows):
            await asyncio.sleep(0)
            state = store.db.execute("SELECT state FROM _bulk_jobs WHERE id=?", (jid,)).fetchone()
            if state is None or state[0] != "InProgress":
                return  # aborted or deleted meanwhile
            chunk = rows[pos:pos + CHUNK_ROWS]
            c0 = time.monotonic()
            with store.transaction():
                seq = pos
                failed = 0
                for raw in chunk:
                    seq += 1
                    vals = raw + [""] * (len(canon) - len(raw))
                    ok, rid, created, err = self._ingest_row(o, op, canon, vals, ext, principal)
                    orig = _csv_text(raw, delim)
                    if ok:
                        line = _quoted([rid or "", "true" if created else "false"], delim) + delim + orig
                    else:
                        failed += 1
                        line = _quoted([rid or "", err or ""], delim) + delim + orig
                    store.db.execute("INSERT OR REPLACE INTO _bulk_results VALUES (?,?,?,?)",
                                     (jid, seq, 1 if ok else 0, line))
                pos += len(chunk)
                ms = int((time.monotonic() - c0) * 1000)
                info["numberRecordsProcessed"] += len(chunk)
                info["numberRecordsFailed"] += failed
                info["totalProcessingTime"] += ms
                info["apiActiveProcessingTime"] += ms
                info["systemModstamp"] = _now()
                self._save(info, processed_upto=pos)
        info.update({"state": "JobComplete", "systemModstamp": _now()})
        info["totalProcessingTime"] = max(info["totalProcessingTime"], int((time.monotonic() - t0) * 1000))
        with store.transaction():
            self._save(info, processed_upto=pos)

    def _ingest_row(self, o: Any, op: str, canon: list[str], vals: list[str], ext: str | None,
                    principal: Principal | None) -> tuple[bool, str | None, bool, str | None]:
        store = self.store
        values: dict[str, Any] = {}
        for name, v in zip(canon, vals, strict=False):
            if v == "":
                continue  # blank: not set (insert) / unchanged (update)
            values[name] = None if v == NULL_TOKEN else v
        rid: str | None = None
        try:
            with store.transaction():
                if op == "insert":
                    if "Id" in values:
                        raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                          "Unable to create/update fields: Id. Please check the security settings "
                                          "of this field and verify that it is read/write for your profile or "
                                          "permission set.", ["Id"])
                    rid = store.create(o, values, principal)
                    return True, rid, True, None
                if op == "upsert":
                    assert ext is not None
                    key = values.pop(ext, None)
                    if key is None:
                        raise RecordError("MISSING_ARGUMENT", f"{ext} not specified", [ext])
                    if ext == "Id":
                        rid = idlib.normalize(key) or key
                        store.update(o, key, values, principal)
                        return True, rid, False, None
                    try:
                        rid, created = store.upsert(o, ext, key, values, principal)
                    except (RecordError, RecordErrors) as e:
                        errs = e.errors if isinstance(e, RecordErrors) else [e]
                        if errs[0].status == 300:
                            raise RecordError("DUPLICATE_EXTERNAL_ID",
                                              f"{ext}: more than one record found for external id field: "
                                              f"[{', '.join(errs[0].fields)}]", [ext]) from None
                        raise
                    return True, rid, created, None
                key = values.pop("Id", None)
                if key is None:
                    raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
                rid = idlib.normalize(key) or key
                if op == "update":
                    store.update(o, key, values, principal)
                else:
                    store.delete(o, key, principal)
                return True, rid, False, None
        except RecordError as e:
            if e.code == "NOT_FOUND" and op in ("update", "delete", "hardDelete"):
                e = RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", e.fields)
            if e.code == "MALFORMED_ID" and op in ("update", "delete", "hardDelete"):
                rid = None
            return False, rid if op != "insert" else None, False, _error_text(e)
        except (RecordErrors, ApiError) as e:
            return False, rid if op != "insert" else None, False, _error_text(e)

    async def _process_query(self, jid: str) -> None:
        from crmsandbox.soql import SoqlError, compile_query, parse
        from crmsandbox.soql.compiler import _OutField

        store = self.store
        info = self._load(jid, None, "query")
        if info["state"] not in ("UploadComplete", "InProgress"):
            return
        t0 = time.monotonic()
        principal = self._owner(info)
        if principal is None:
            self._fail(jid, "InvalidUser : the job's user is inactive")
            return
        owner = principal.user_id if not principal.view_all else None
        try:
            compiled = compile_query(parse(info["_soql"]), store.soql_schema,
                                     include_deleted=info["operation"] == "queryAll", owner_id=owner,
                                     api_version=str(info["apiVersion"]), now=datetime.now(UTC))
        except SoqlError as e:
            self._fail(jid, f"{e.error_code} : {e.message}")
            return
        columns: list[str] = []
        getters: list[tuple[int, str]] = []
        for out in compiled._outputs:
            if isinstance(out, _OutField):
                columns.append(out.name)
                getters.append((out.column, out.field.type))
            else:
                for pf in out.fields:
                    columns.append(f"{out.name}.{pf.name}")
                    getters.append((pf.column, pf.field.type))
        delim = DELIMITERS[info["columnDelimiter"]]
        info.update({"state": "InProgress", "systemModstamp": _now()})
        with store.transaction():
            store.db.execute("DELETE FROM _bulk_query_rows WHERE job_id=?", (jid,))
            self._save(info, columns=json.dumps(columns), total_rows=0, processed_upto=0)
        conn = store._reader()
        try:
            conn.execute("BEGIN")
            cur = conn.execute(compiled.select_sql, compiled.params)
            chunk_no = 0
            total = 0
            while True:
                await asyncio.sleep(0)
                state = store.db.execute("SELECT state FROM _bulk_jobs WHERE id=?", (jid,)).fetchone()
                if state is None or state[0] != "InProgress":
                    return
                rows = cur.fetchmany(QUERY_CHUNK)
                if not rows:
                    break
                lines = [_csv_text([_format_value(r[c], t) for c, t in getters], delim) for r in rows]
                total += len(rows)
                info["numberRecordsProcessed"] = total
                info["systemModstamp"] = _now()
                with store.transaction():
                    store.db.execute("INSERT INTO _bulk_query_rows VALUES (?,?,?,?)",
                                     (jid, chunk_no, len(rows), json.dumps(lines)))
                    self._save(info, total_rows=total)
                chunk_no += 1
                if len(rows) < QUERY_CHUNK:
                    break
            cur.close()
        finally:
            store._release_reader(conn)
        info.update({"state": "JobComplete", "systemModstamp": _now(),
                     "totalProcessingTime": int((time.monotonic() - t0) * 1000)})
        with store.transaction():
            self._save(info, total_rows=total)


# ---------------------------------------------------------------------------------------------- handlers
def _service(ctx: api.Ctx) -> BulkService:
    svc = ctx.server.extensions.get("bulk") if ctx.server else None
    if not isinstance(svc, BulkService):
        raise not_found()
    svc.ensure_worker()
    return svc


def ingest_jobs(ctx: api.Ctx, req: Request) -> Response:
    svc = _service(ctx)
    if req.method == "POST":
        return Response(200, svc.public(svc.create_ingest(ctx, req.json()), full=False))
    return Response(200, svc.list_jobs(ctx, "ingest"))


def _job(ctx: api.Ctx, req: Request, id: str, kind: str) -> Response:
    """GET job info, PATCH its state, DELETE it — the same for ingest and query jobs."""
    svc = _service(ctx)
    if req.method == "GET":
        return Response(200, svc.public(svc._load(id, ctx.principal, kind)))
    if req.method == "PATCH":
        return Response(200, svc.public(svc.set_state(ctx, id, kind, req.json()), full=False))
    svc.delete_job(ctx, id, kind)
    return Response(204)


def ingest_job(ctx: api.Ctx, req: Request, id: str) -> Response:
    return _job(ctx, req, id, "ingest")


def ingest_batches(ctx: api.Ctx, req: Request, id: str) -> Response:
    _service(ctx).upload(ctx, id, req)
    return Response(201)


def ingest_results(ctx: api.Ctx, req: Request, id: str, which: str) -> Response:
    body = _service(ctx).ingest_results(ctx, id, which)
    return Response(200, body, content_type=CSV_CT + ";charset=UTF-8")


def query_jobs(ctx: api.Ctx, req: Request) -> Response:
    svc = _service(ctx)
    if req.method == "POST":
        return Response(200, svc.public(svc.create_query(ctx, req.json()), full=False))
    return Response(200, svc.list_jobs(ctx, "query"))


def query_job(ctx: api.Ctx, req: Request, id: str) -> Response:
    return _job(ctx, req, id, "query")


def query_results(ctx: api.Ctx, req: Request, id: str) -> Response:
    return _service(ctx).query_results(ctx, id, req)


def _limits_hook(ctx: api.Ctx) -> dict[str, dict[str, int]]:
    svc = ctx.server.extensions.get("bulk") if ctx.server else None
    return svc.limits(ctx) if isinstance(svc, BulkService) else {}


_ROUTES: list[tuple[str | tuple[str, ...], str, api.Handler]] = [
    (("GET", "POST"), r"jobs/ingest", ingest_jobs),
    (("GET", "PATCH", "DELETE"), r"jobs/ingest/(?P<id>[A-Za-z0-9]+)", ingest_job),
    ("PUT", r"jobs/ingest/(?P<id>[A-Za-z0-9]+)/batches", ingest_batches),
    ("GET", r"jobs/ingest/(?P<id>[A-Za-z0-9]+)/(?P<which>successfulResults|failedResults|unprocessedrecords)",
     ingest_results),
    (("GET", "POST"), r"jobs/query", query_jobs),
    (("GET", "PATCH", "DELETE"), r"jobs/query/(?P<id>[A-Za-z0-9]+)", query_job),
    ("GET", r"jobs/query/(?P<id>[A-Za-z0-9]+)/results", query_results),
]


def mount(server: SandboxServer) -> None:
    """Create the job tables, attach the service to ``server`` and register the routes (once per process)."""
    server.extensions["bulk"] = BulkService(server)
    if not any(h is ingest_jobs for _, _, h in api.ROUTER.routes):
        for methods, pattern, handler in _ROUTES:
            api.ROUTER.add(methods, pattern, handler)
    if _limits_hook not in api.LIMIT_HOOKS:
        api.LIMIT_HOOKS.append(_limits_hook)
