"""Rate limits shared by every server process ([M9] spam defence, public endpoints "rate limited").

A limit is "at most ``burst`` per ``burst / rate`` seconds" per key, counted in a sliding window approximated from two
fixed windows (the previous window's count weighted by how much of it still overlaps). Counters live in the database
(``RateWindow``), so several granian workers, or several hosts against PostgreSQL, share them.

Each process claims allowance in *leases*: one upsert claims ``lease`` units at once and serves them from memory, so
a busy key costs one database round trip per ``lease`` requests instead of one per request. A lease is at most 1% of
the limit, so all processes together overshoot a limit by at most (processes x 1%). Small limits (forms: a handful per
minute) lease one unit at a time and are exact.

Where the counters live: PostgreSQL (scale mode, shared by every host) in an UNLOGGED table; embedded mode (SQLite,
one host) in a small SQLite file of its own next to the database (``<data dir>/ratelimit.sqlite3``, no fsync), so a
request never waits behind the main database's single writer (the ingester, the UI).

If the store cannot be reached the limiter falls back to a per-process bucket: a limiter never turns a request into
a 500.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection

from .models import RateWindow

logger = logging.getLogger("loopline.tracking")

MAX_KEY = 200
MAX_LOCAL_KEYS = 20000


class LocalBuckets:
    """Per-process token buckets: the fallback when the shared counters are unreachable."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - stamp) * rate)
            ok = tokens >= cost
            if ok:
                tokens -= cost
            if len(self._buckets) > MAX_LOCAL_KEYS:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 120}
            self._buckets[key] = (tokens, now)
            return ok

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


class SharedRateLimiter:
    def __init__(self, *, clock=time.time) -> None:
        self._clock = clock
        # key -> (window index, units left in this process's lease)
        self._leases: dict[str, tuple[int, float]] = {}
        self._denied: dict[str, float] = {}  # key -> refuse locally until this time
        self._lock = threading.Lock()
        self.local = LocalBuckets()
        self.round_trips = 0  # for tests and the benchmark

    @staticmethod
    def lease_size(limit: float) -> int:
        return max(1, int(limit // 100))

    def allow(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` of ``key``'s allowance; False when the shared limit is reached."""
        if rate <= 0 or burst <= 0:
            return False
        key = key[:MAX_KEY]
        window_s = max(1.0, burst / rate)
        now = self._clock()
        window = int(now // window_s)
        with self._lock:
            leased = self._leases.get(key)
            if leased is not None and leased[0] == window and leased[1] >= cost:
                self._leases[key] = (window, leased[1] - cost)
                return True
            if self._denied.get(key, 0.0) > now:
                return False  # refused a moment ago: a flood costs no database round trip per request
        try:
            return self._claim(key, now, window, window_s, burst, cost)
        except DatabaseError:
            logger.warning("shared rate limiter unavailable; using the per-process limit", exc_info=True)
            return self.local.allow(key, rate=rate, burst=burst, cost=cost)

    def _claim(self, key: str, now: float, window: int, window_s: float, limit: float, cost: float) -> bool:
        lease = max(cost, self.lease_size(limit))
        shared_key = f"{key}|{window_s:g}"[:MAX_KEY]
        self.round_trips += 1
        store = _store()
        previous, current = store.claim(shared_key, window, math.ceil(lease), (window + 2) * window_s)
        overlap = 1.0 - (now - window * window_s) / window_s
        used_before = previous * overlap + current - lease  # what every process had claimed before this lease
        granted = min(lease, limit - used_before)
        if granted < cost:
            # Refused requests do not count against the limit: give the claim back.
            store.give_back(shared_key, window, math.ceil(lease))
            with self._lock:
                if len(self._denied) > MAX_LOCAL_KEYS:
                    self._denied.clear()
                self._denied[key] = now + min(1.0, window_s / 20)
            return False
        with self._lock:
            if len(self._leases) > MAX_LOCAL_KEYS:
                self._leases.clear()
            self._leases[key] = (window, granted - cost)
        return True

    def reset(self) -> None:
        """Forget this process's leases and fallback buckets (tests; the shared rows belong to the database)."""
        with self._lock:
            self._leases.clear()
            self._denied.clear()
        self.local.reset()


# --- Stores ----------------------------------------------------------------------------------------------------------

CLAIM_SQL = ("INSERT INTO {t} (bucket, window_no, used, expires_at) VALUES ({p}, {p}, {p}, {p}) "
             "ON CONFLICT (bucket, window_no) DO UPDATE SET used = {t}.used + excluded.used RETURNING used")
PREVIOUS_SQL = "SELECT used FROM {t} WHERE bucket = {p} AND window_no = {p}"
GIVE_BACK_SQL = "UPDATE {t} SET used = used - {p} WHERE bucket = {p} AND window_no = {p}"


class DatabaseStore:
    """The ``RateWindow`` table of the main database (PostgreSQL in scale mode; tests)."""

    def claim(self, bucket: str, window: int, amount: int, expires_at: float) -> tuple[int, int]:
        t, p = connection.ops.quote_name(RateWindow._meta.db_table), "%s"
        with connection.cursor() as cursor:
            cursor.execute(PREVIOUS_SQL.format(t=t, p=p), [bucket, window - 1])
            row = cursor.fetchone()
            cursor.execute(CLAIM_SQL.format(t=t, p=p), [bucket, window, amount, expires_at])
            return (row[0] if row else 0), cursor.fetchone()[0]

    def give_back(self, bucket: str, window: int, amount: int) -> None:
        t = connection.ops.quote_name(RateWindow._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(GIVE_BACK_SQL.format(t=t, p="%s"), [amount, bucket, window])

    def sweep(self, now: float) -> int:
        deleted, _ = RateWindow.objects.filter(expires_at__lt=now).delete()
        return deleted


class FileStore:
    """A SQLite file shared by the processes of one host (embedded mode). Counters need no durability: no fsync."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS ratewindow (bucket TEXT NOT NULL, window_no INTEGER NOT NULL, "
              "used INTEGER NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (bucket, window_no))")

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=5, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(self.SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def claim(self, bucket: str, window: int, amount: int, expires_at: float) -> tuple[int, int]:
        try:
            conn = self._conn()
            row = conn.execute(PREVIOUS_SQL.format(t="ratewindow", p="?"), (bucket, window - 1)).fetchone()
            current = conn.execute(CLAIM_SQL.format(t="ratewindow", p="?"),
                                   (bucket, window, amount, expires_at)).fetchone()[0]
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc
        return (row[0] if row else 0), current

    def give_back(self, bucket: str, window: int, amount: int) -> None:
        try:
            self._conn().execute(GIVE_BACK_SQL.format(t="ratewindow", p="?"), (amount, bucket, window))
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc

    def sweep(self, now: float) -> int:
        try:
            return self._conn().execute("DELETE FROM ratewindow WHERE expires_at < ?", (now,)).rowcount
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc


_file_stores: dict[str, FileStore] = {}
_database_store = DatabaseStore()


def _store() -> DatabaseStore | FileStore:
    """``TRACKING_RATELIMIT_STORE``: "database" or "file"; default: file on SQLite (outside tests), else database."""
    mode = getattr(settings, "TRACKING_RATELIMIT_STORE", None) or os.environ.get("LOOPLINE_TRACKING_RATELIMIT_STORE")
    if not mode:
        mode = "file" if connection.vendor == "sqlite" and not getattr(settings, "TESTING", False) else "database"
    if mode != "file":
        return _database_store
    path = str(Path(getattr(settings, "TRACKING_RATELIMIT_FILE", None) or Path(settings.DATA_DIR) / "ratelimit.sqlite3"))
    store = _file_stores.get(path)
    if store is None:
        store = _file_stores.setdefault(path, FileStore(Path(path)))
    return store


def sweep(now: float | None = None) -> int:
    """Delete expired counters (scheduled)."""
    return _store().sweep(now if now is not None else time.time())
