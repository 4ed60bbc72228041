"""Per-process hit spool files for embedded mode (SQLite).

SQLite has one writer at a time per database file, so several server processes appending hits to the main database
queue behind each other's commits (and behind the UI and the workers). Instead each server process appends to its own
small SQLite file in ``<data dir>/tracking-spool/`` (WAL, ``synchronous=FULL``: every commit is fsync'd), holding an
exclusive ``flock`` on ``<file>.lock`` while it lives.

The ingester reads each spool file past a watermark kept in the main database (``SpoolWatermark``), writes the
activities and the new watermark in one main-database transaction, then deletes the ingested rows from the spool file.
A crash anywhere re-reads at most rows past the committed watermark, so every hit is ingested exactly once. A spool
file whose writer is gone (its lock is free) and that is fully ingested is removed.

In scale mode (PostgreSQL) hits go to the ``TrackingHit`` table instead: PostgreSQL takes concurrent inserts well.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import time
from pathlib import Path

from django.conf import settings

SCHEMA = ("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY AUTOINCREMENT, bu_id INTEGER NOT NULL, "
          "cookie TEXT NOT NULL, received_at REAL NOT NULL, hits INTEGER NOT NULL, payload TEXT NOT NULL)")


def spool_dir() -> Path:
    path = Path(getattr(settings, "TRACKING_SPOOL_DIR", None) or Path(settings.DATA_DIR) / "tracking-spool")
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_spool_files() -> bool:
    mode = getattr(settings, "TRACKING_SPOOL", None) or os.environ.get("LOOPLINE_TRACKING_SPOOL", "")
    if mode:
        return mode == "files"
    from django.db import connection

    return connection.vendor == "sqlite" and not getattr(settings, "TESTING", False)


def _connect(path: Path, *, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(SCHEMA)
    return conn


_serial = itertools.count()


class SpoolWriter:
    """One commit slot's spool file in this process. Used by one committing thread at a time (the slot's holder)."""

    def __init__(self, *, fsync: bool = True):
        self.pid = os.getpid()
        # Several commit slots per process may open their files in the same millisecond.
        self.path = spool_dir() / f"hits-{self.pid}-{int(time.time() * 1000)}-{next(_serial)}.sqlite3"
        self._lock_fd = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.conn = _connect(self.path, fsync=fsync)

    def append(self, rows: list[tuple]) -> None:
        from .capture import chunked, multi_row_insert

        statements = list(chunked(rows))
        if len(statements) == 1:
            # One statement in autocommit mode is one transaction: one call into SQLite, one fsync.
            count, params = statements[0]
            self.conn.execute(multi_row_insert("hits", count, "?"), params)
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for count, params in statements:
                self.conn.execute(multi_row_insert("hits", count, "?"), params)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def spool_files() -> list[Path]:
    return sorted(spool_dir().glob("hits-*.sqlite3"))


def writer_alive(path: Path) -> bool:
    """True while the process that owns ``path`` lives (it holds the lock)."""
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def open_reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=10, isolation_level=None)
    conn.execute(SCHEMA)
    return conn


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def pending_count() -> int:
    total = 0
    for path in spool_files():
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            total += conn.execute("SELECT coalesce(sum(hits), 0) FROM hits").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
    return total
