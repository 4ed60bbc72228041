"""The hit capture path: validate, append to the staging table with group commit, acknowledge only durable hits.

Group commit without a writer thread (leader/follower): a request whose batch is open and finds a free commit slot
takes the whole open batch and writes it itself (one multi-row INSERT, one commit, one fsync); requests that arrive
meanwhile join the next open batch and wait; when a commit ends, its batch's requests get the outcome and a waiting
request of the next batch becomes its leader. A lone request so commits with no thread hand-off at all (two thread
wake-ups per commit were a large share of a hit's CPU when fsync is fast), while under load many requests still share a
commit. Each request gets its answer only after its hits are on disk; a failed write answers 503 and nothing is
acknowledged; the tracker retries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.core.signals import setting_changed
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
# How long a commit leader may wait for hit requests already in this process to join its batch (see HitWriter).
DEFAULT_COMMIT_DELAY_MS = 2.0


class HitError(ValueError):
    """A request the capture endpoint rejects as a whole (400)."""


# --- Settings read once (they were a measurable share of a hit: a missing Django setting costs an exception) ---------


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default) not in ("0", "false", "no")


@dataclass(frozen=True, slots=True)
class Tuning:
    group_commit: bool
    fsync: bool
    spool_files: bool
    writer_threads: int
    commit_delay_s: float


@functools.cache
def tuning() -> Tuning:
    """The capture knobs from settings, else the environment; re-read when a test overrides settings."""
    fsync = getattr(settings, "TRACKING_FSYNC", None)
    if fsync is None:
        fsync = _env_flag("LOOPLINE_TRACKING_FSYNC", "1")
    threads = getattr(settings, "TRACKING_WRITER_THREADS", None) or os.environ.get("LOOPLINE_TRACKING_WRITER_THREADS") \
        or 2
    delay_ms = getattr(settings, "TRACKING_COMMIT_DELAY_MS", None)
    if delay_ms is None:
        delay_ms = os.environ.get("LOOPLINE_TRACKING_COMMIT_DELAY_MS") or DEFAULT_COMMIT_DELAY_MS
    return Tuning(
        group_commit=bool(getattr(settings, "TRACKING_GROUP_COMMIT", not getattr(settings, "TESTING", False))),
        fsync=bool(fsync), spool_files=spool.use_spool_files(), writer_threads=max(1, min(8, int(threads))),
        commit_delay_s=max(0.0, min(1000.0, float(delay_ms))) / 1000)


def _settings_changed(**kwargs) -> None:
    tuning.cache_clear()


setting_changed.connect(_settings_changed, dispatch_uid="loopline.tracking.capture.tuning")


def _fsync_enabled() -> bool:
    return tuning().fsync


# --- Validation ----------------------------------------------------------------------------------------------------


def parse_visitor(value) -> str:
    """A visitor cookie value as 32 lowercase hex digits, or HitError."""
    if not isinstance(value, str) or len(value) > 40:
        raise HitError("visitor must be a UUID")
    try:
        return uuid.UUID(value).hex
    except ValueError:
        raise HitError("visitor must be a UUID") from None


_HTTP_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#][^\x00-\x1f\x7f]*)?")
_url_ok = _HTTP_URL.fullmatch


def _http_url(value, limit: int = MAX_URL) -> str | None:
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    return value if _url_ok(value) else None


def _text(value, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return value.replace("\x00", "")[:limit]


def validate_hit(hit, *, now: float) -> dict | None:
    """The compact form of one hit as stored, or None when the hit is invalid (it is dropped)."""
    if not isinstance(hit, dict):
        return None
    kind = hit.get("type", "pageview")
    if kind == "pageview":
        url = hit.get("url")
        if not isinstance(url, str) or not url or len(url) > MAX_URL or not _url_ok(url):
            return None
        row: dict = {"t": 1, "u": url}
        title = hit.get("title")
        if isinstance(title, str) and title:
            if "\x00" in title:
                title = title.replace("\x00", "")
            if title:
                row["ti"] = title[:MAX_TITLE]
        ref = hit.get("referrer")
        if isinstance(ref, str) and ref and len(ref) <= MAX_URL and _url_ok(ref):
            row["r"] = ref
    elif kind == "identify":
        token = hit.get("token")
        if not isinstance(token, str) or not 10 < len(token) < 120:
            return None
        row = {"t": 2, "tk": token}
    else:
        return None
    campaign = hit.get("campaign")
    if type(campaign) is int and 0 < campaign < 2**62:
        row["c"] = campaign
    ts = hit.get("ts")
    # Client clocks are trusted only within a day in the past and a minute in the future (offline queues).
    if (type(ts) is float or (type(ts) is int and -(2**62) < ts < 2**62)) and now - 86400 < ts / 1000 < now + 60:
        row["ts"] = round(ts / 1000, 3)
    return row


# --- Group commit --------------------------------------------------------------------------------------------------

INSERT_COLUMNS = "(bu_id, cookie, received_at, hits, payload)"
ROWS_PER_STATEMENT = 190  # 5 parameters a row: under 999, the lowest SQLite variable limit still around

_OPEN, _GATHERING, _WRITING, _DONE = 0, 1, 2, 3


class _Batch:
    """Rows of the requests that share one commit, and the condition that tells them it happened (or failed)."""

    __slots__ = ("cond", "error", "rows", "state")

    def __init__(self, lock: threading.Lock) -> None:
        self.rows: list[tuple] = []
        self.cond = threading.Condition(lock)  # shares the writer's lock: no second lock to take
        self.state = _OPEN
        self.error: BaseException | None = None


class _Slot:
    """A commit that may be in flight: with spool files, each slot has its own file, so commits never queue."""

    __slots__ = ("spool",)

    def __init__(self) -> None:
        self.spool: spool.SpoolWriter | None = None


@functools.cache
def multi_row_insert(table: str, count: int, placeholder: str = "%s") -> str:
    row = "(" + ", ".join([placeholder] * 5) + ")"
    return f"INSERT INTO {table} {INSERT_COLUMNS} VALUES " + ", ".join([row] * count)


def chunked(rows: list[tuple], size: int = ROWS_PER_STATEMENT):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield len(chunk), [value for row in chunk for value in row]


class HitWriter:
    """Leader/follower group commit with up to ``TRACKING_WRITER_THREADS`` (default 2) commits in flight per process.

    A commit is ONE statement in autocommit mode whenever it fits (up to 190 requests): one call into the driver, so
    the committing thread gives up and re-takes the GIL once per commit. With two slots the next batch is written
    while the previous one still waits for its fsync, so a request waits for about one commit instead of one and a
    half; each slot has its own spool file, so their commits never queue behind each other.

    Commit delay: an fsync costs CPU (on this kind of disk about as much as the rest of a hit request), and on a fast
    disk a commit can end before a request that is already being handled reaches it, so each pays for its own. Hit
    requests announce themselves when they enter the fast path (``arrive``); a leader that sees announced requests
    not yet in its batch waits for them (at most ``TRACKING_COMMIT_DELAY_MS``, default 2 ms; 0 turns it off), so
    they share one fsync. A lone request never waits. (A closed-loop benchmark batches by itself; this is for
    requests that arrive independently, as real visitors' do.)"""

    def __init__(self, threads: int | None = None) -> None:
        self._lock = threading.Lock()
        self._thread_count = threads
        self._pid: int | None = None
        self._open = _Batch(self._lock)
        self._free: list[_Slot] = []
        self._local = threading.local()  # per thread: the id of its SQLite connection set to synchronous=FULL
        self._spools: list[spool.SpoolWriter] = []
        self._arriving = 0  # requests announced by arrive() that have neither joined a batch nor departed
        self._gathered = threading.Condition(self._lock)  # a gathering leader waits on it
        self._mine = threading.local()  # per request thread: announced and not yet counted off

    def arrive(self) -> None:
        """A hit request entered this process: a leader about to commit may wait for its rows."""
        t = tuning()
        if t.commit_delay_s and t.group_commit and not self._mine.__dict__.get("arrived"):
            with self._lock:
                self._arriving += 1
            self._mine.arrived = True

    def depart(self) -> None:
        """The request is answered (or wrote nothing): stop waiting for it."""
        if self._mine.__dict__.get("arrived"):
            self._mine.arrived = False
            with self._lock:
                self._count_off()

    def _count_off(self) -> None:
        # With the lock held.
        self._arriving = max(0, self._arriving - 1)
        if not self._arriving and self._open.state == _GATHERING:
            self._gathered.notify()

    def write(self, rows: list[tuple], timeout: float = WRITE_TIMEOUT_S) -> None:
        """Block until ``rows`` are committed (raises on failure or timeout)."""
        if not rows:
            return
        if not tuning().group_commit:
            self._insert(rows, None)
            return
        mine = self._mine.__dict__
        with self._lock:
            if self._pid != os.getpid():  # first use, or forked: the parent's batch and files are not ours
                self._reset()
            if mine.get("arrived"):
                mine["arrived"] = False
                self._count_off()
            batch = self._open
            batch.rows.extend(rows)
            slot = self._lead(batch)
            if slot is None:
                deadline = time.monotonic() + timeout
                while batch.state != _DONE:
                    if batch.state == _OPEN and (slot := self._lead(batch)) is not None:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("hit write timed out")
                    batch.cond.wait(remaining)
                if slot is None:  # another request committed our rows
                    if batch.error is not None:
                        raise batch.error
                    return
        self._commit(batch, slot)

    def _reset(self) -> None:
        if self._pid is not None:  # forked: announcements were the parent's (before the first write they are ours)
            self._arriving = 0
        self._open = _Batch(self._lock)
        self._free = [_Slot() for _ in range(self._thread_count or tuning().writer_threads)]
        self._spools = []
        self._pid = os.getpid()

    def _lead(self, batch: _Batch) -> _Slot | None:
        """With the lock held: take the open ``batch`` and a free slot to commit it, or None."""
        if batch.state != _OPEN or not self._free or batch is not self._open:
            return None
        slot = self._free.pop()
        if self._arriving:
            # Requests already in this process will join: wait for them (rows keep landing in this batch).
            batch.state = _GATHERING
            deadline = time.monotonic() + tuning().commit_delay_s
            while self._arriving and len(batch.rows) < ROWS_PER_STATEMENT:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._gathered.wait(remaining)
        batch.state = _WRITING
        self._open = _Batch(self._lock)
        return slot

    def _commit(self, batch: _Batch, slot: _Slot) -> None:
        error: BaseException | None = None
        try:
            self._insert(batch.rows, slot)
        except BaseException as exc:
            logger.exception("tracking hit write failed (%d requests not acknowledged)", len(batch.rows))
            if not tuning().spool_files and not connection.in_atomic_block:
                with contextlib.suppress(Exception):  # already failing; the next write reconnects
                    connection.close()
            error = exc
        with self._lock:
            batch.error = error
            batch.state = _DONE
            batch.cond.notify_all()
            self._free.append(slot)
            if self._open.rows:  # requests wait for a slot: one of them leads the next commit
                self._open.cond.notify_all()
        if error is not None:
            raise error

    def _insert(self, rows: list[tuple], slot: _Slot | None) -> None:
        t = tuning()
        if slot is not None and t.spool_files:
            writer = slot.spool
            if writer is None or writer.pid != os.getpid():
                writer = slot.spool = spool.SpoolWriter(fsync=t.fsync)
                self._spools.append(writer)
            writer.append(rows)
            return
        if connection.vendor == "sqlite" and t.fsync and not connection.in_atomic_block:
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


def _loads(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # What orjson refuses but the json module reads (integers past 64 bits, NaN): decided as before.
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HitError("body must be JSON") from None


def _dumps(payload: dict) -> str:
    try:
        return orjson.dumps(payload).decode()
    except (orjson.JSONEncodeError, TypeError):
        # Lone surrogates ("\\ud800" in the request): replaced, so neither the spool nor the ingester chokes on them.
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "replace").decode("utf-8")


def capture(config, body: bytes, *, ip: str, ua: str) -> dict:
    """Validate a hit request for the tracker ``config`` and store its hits durably. Returns counts for the reply."""
    data = _loads(body)
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
    valid = []
    for hit in hits:
        row = validate_hit(hit, now=now)
        if row is not None:
            valid.append(row)
    if valid:
        if len(ua) > 500 or "\x00" in ua:
            ua = ua[:500].replace("\x00", "")
        payload = _dumps({"ip": ip, "ua": ua, "h": valid})
        # One row per request: the ingester expands its hits.
        writer.write([(config.bu_id, cookie, now, len(valid), payload)])
    return {"accepted": len(valid), "rejected": len(hits) - len(valid)}
