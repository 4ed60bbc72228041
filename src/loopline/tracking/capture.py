"""The hit capture path: validate, append to the staging table with group commit, acknowledge only durable hits.

Each server process has one writer thread. Request threads add their validated rows to the open batch and wait; the
writer takes the whole batch, writes it in one transaction (one multi-row INSERT, one commit, one fsync) and wakes every
request of the batch with the outcome. Under load many requests share a commit, so throughput grows with concurrency while each
request still gets its answer only after its hits are on disk. A failed write answers 503 and nothing is acknowledged;
the tracker retries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid

from django.conf import settings
from django.db import connection, transaction

from . import ratelimit, spool
from .models import TrackingHit

logger = logging.getLogger("loopline.tracking")

MAX_BODY_BYTES = 64 * 1024
MAX_HITS_PER_REQUEST = 50
MAX_URL = 2000
MAX_TITLE = 255
HIT_TYPES = {"pageview": 1, "identify": 2}
WRITE_TIMEOUT_S = 10.0


class HitError(ValueError):
    """A request the capture endpoint rejects as a whole (400)."""


def parse_visitor(value) -> str:
    """A visitor cookie value as 32 lowercase hex digits, or HitError."""
    if not isinstance(value, str) or len(value) > 40:
        raise HitError("visitor must be a UUID")
    try:
        return uuid.UUID(value).hex
    except ValueError:
        raise HitError("visitor must be a UUID") from None


_HTTP_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#][^\x00-\x1f\x7f]*)?")


def _http_url(value, limit: int = MAX_URL) -> str | None:
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    return value if _HTTP_URL.fullmatch(value) else None


def _text(value, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return value.replace("\x00", "")[:limit]


def validate_hit(hit, *, now: float) -> dict | None:
    """The compact form of one hit as stored, or None when the hit is invalid (it is dropped)."""
    if not isinstance(hit, dict):
        return None
    kind = HIT_TYPES.get(hit.get("type", "pageview"))
    if kind is None:
        return None
    row: dict = {"t": kind}
    if kind == 1:
        url = _http_url(hit.get("url"))
        if url is None:
            return None
        row["u"] = url
        if title := _text(hit.get("title"), MAX_TITLE):
            row["ti"] = title
        if ref := _http_url(hit.get("referrer")):
            row["r"] = ref
    else:
        token = hit.get("token")
        if not isinstance(token, str) or not 10 < len(token) < 120:
            return None
        row["tk"] = token
    campaign = hit.get("campaign")
    if type(campaign) is int and 0 < campaign < 2**62:
        row["c"] = campaign
    ts = hit.get("ts")
    # Client clocks are trusted only within a day in the past and a minute in the future (offline queues).
    if isinstance(ts, int | float) and not isinstance(ts, bool) and now - 86400 < ts / 1000 < now + 60:
        row["ts"] = round(ts / 1000, 3)
    return row


def _fsync_enabled() -> bool:
    value = getattr(settings, "TRACKING_FSYNC", None)
    if value is None:
        value = os.environ.get("LOOPLINE_TRACKING_FSYNC", "1") not in ("0", "false", "no")
    return bool(value)


# --- Group-commit writer -------------------------------------------------------------------------------------------

INSERT_COLUMNS = "(bu_id, cookie, received_at, hits, payload)"
ROWS_PER_STATEMENT = 190  # 5 parameters a row: under 999, the lowest SQLite variable limit still around


class _Batch:
    """Rows of the requests that share one commit, and the event that tells them it happened (or failed)."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


def multi_row_insert(table: str, count: int, placeholder: str = "%s") -> str:
    row = "(" + ", ".join([placeholder] * 5) + ")"
    return f"INSERT INTO {table} {INSERT_COLUMNS} VALUES " + ", ".join([row] * count)


def chunked(rows: list[tuple], size: int = ROWS_PER_STATEMENT):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield len(chunk), [value for row in chunk for value in row]


class HitWriter:
    """A few writer threads per process (``TRACKING_WRITER_THREADS``, default 2). A commit is ONE statement in autocommit
    mode whenever it fits (up to 190 requests): one call into the driver, so a writer thread gives up and waits to
    re-take the GIL once per commit rather than once per row and once more for BEGIN and COMMIT (each re-take can cost a
    whole switch interval while request threads keep the interpreter busy). With two writers the next batch is taken
    while the previous one still waits for its fsync, so a request waits for about one commit instead of one and a half;
    each writer has its own spool file, so their commits never queue behind each other."""

    def __init__(self, threads: int | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = _Batch()
        self._threads: list[threading.Thread] = []
        self._thread_count = threads
        self._pid: int | None = None
        self._local = threading.local()  # per writer thread: its spool file and its SQLite connection's id
        self._spools: list[spool.SpoolWriter] = []

    def write(self, rows: list[tuple], timeout: float = WRITE_TIMEOUT_S) -> None:
        """Block until ``rows`` are committed (raises on failure or timeout)."""
        if not rows:
            return
        if not getattr(settings, "TRACKING_GROUP_COMMIT", not getattr(settings, "TESTING", False)):
            self._insert(rows)
            return
        with self._cond:
            self._ensure_threads()
            batch = self._open
            first = not batch.rows
            batch.rows.extend(rows)
            if first:
                self._cond.notify()
        if not batch.done.wait(timeout):
            raise TimeoutError("hit write timed out")
        if batch.error is not None:
            raise batch.error

    def _wanted_threads(self) -> int:
        count = self._thread_count or getattr(settings, "TRACKING_WRITER_THREADS", None) \
            or os.environ.get("LOOPLINE_TRACKING_WRITER_THREADS") or 2
        return max(1, min(8, int(count)))

    def _ensure_threads(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's threads and batch are not ours
            self._open = _Batch()
            self._threads = []
            self._spools = []
            self._pid = os.getpid()
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self._wanted_threads():
            thread = threading.Thread(target=self._run, name="loopline-hit-writer", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._open.rows:
                    self._cond.wait()
                batch, self._open = self._open, _Batch()
            try:
                self._insert(batch.rows, in_writer_thread=True)
            except Exception as exc:
                logger.exception("tracking hit write failed (%d requests not acknowledged)", len(batch.rows))
                with contextlib.suppress(Exception):  # already failing; the next write reconnects
                    connection.close()
                batch.error = exc
            batch.done.set()

    def _insert(self, rows: list[tuple], *, in_writer_thread: bool = False) -> None:
        # The writer thread keeps its connection open (it is closed and reopened only after an error).
        if in_writer_thread and spool.use_spool_files():
            writer = getattr(self._local, "spool", None)
            if writer is None or writer.pid != os.getpid():
                writer = self._local.spool = spool.SpoolWriter(fsync=_fsync_enabled())
                self._spools.append(writer)
            writer.append(rows)
            return
        if connection.vendor == "sqlite" and _fsync_enabled() and not connection.in_atomic_block:
            connection.ensure_connection()
            raw = id(connection.connection)
            if raw != getattr(self._local, "conn_id", None):
                # FULL: the WAL is fsync'd at every commit, so an acknowledged hit survives a power cut too.
                connection.connection.execute("PRAGMA synchronous=FULL")
                self._local.conn_id = raw
        table = connection.ops.quote_name(TrackingHit._meta.db_table)
        statements = list(chunked(rows))
        if len(statements) == 1:
            # Autocommit: the single statement is its own transaction (one round trip on PostgreSQL).
            count, params = statements[0]
            with connection.cursor() as cursor:
                cursor.execute(multi_row_insert(table, count), params)
            return
        with transaction.atomic(), connection.cursor() as cursor:
            for count, params in statements:
                cursor.execute(multi_row_insert(table, count), params)


writer = HitWriter()


# --- Rate limiting -------------------------------------------------------------------------------------------------

# Shared by every server process through the database (see ratelimit.py).
limiter = ratelimit.SharedRateLimiter()


def capture(config, body: bytes, *, ip: str, ua: str) -> dict:
    """Validate a hit request for the tracker ``config`` and store its hits durably. Returns counts for the reply."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HitError("body must be JSON") from None
    if not isinstance(data, dict):
        raise HitError("body must be a JSON object")
    cookie = parse_visitor(data.get("visitor"))
    hits = data.get("hits")
    if hits is None:
        hits = [data]
    if not isinstance(hits, list) or not hits:
        raise HitError("hits must be a non-empty list")
    if len(hits) > MAX_HITS_PER_REQUEST:
        raise HitError(f"at most {MAX_HITS_PER_REQUEST} hits per request")
    now = time.time()
    valid = [h for h in (validate_hit(hit, now=now) for hit in hits) if h is not None]
    if valid:
        payload = json.dumps({"ip": ip, "ua": ua[:500].replace("\x00", ""), "h": valid}, separators=(",", ":"), ensure_ascii=False)
        # One row per request: the ingester expands its hits.
        writer.write([(config.bu_id, cookie, now, len(valid), payload)])
    return {"accepted": len(valid), "rejected": len(hits) - len(valid)}
