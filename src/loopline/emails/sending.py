"""The send engine: claim ledger rows, render, hand messages to the mail server exactly once ([M29], [M30]).

Exactly once across crashes, without a duplicate: over SMTP a message exists for the server only once it receives the
final "." of DATA. Each connection thread sends MAIL, RCPT, DATA and the body, then waits; the engine thread marks the
waiting rows COMMITTED in one statement (fenced by the claim's owner token) and only then writes the final "." on
each socket. A worker killed before that commit leaves rows QUEUED whose messages were never completed (the server
discards them), so they are sent again by the next worker; after the commit a row is never sent again.
The only window left is the few microseconds between the commit and the "." syscalls.

With Django's own SMTP backend the engine is ``async_engine`` (one thread, one event loop, same ledger rules). The
thread engine here serves SMTP backend subclasses and ``LOOPLINE_EMAIL_ENGINE=threads``. Its threads: the engine
thread owns the database (claims, the prospects of a claimed batch, the commit point, ledger updates) and mostly
sleeps until a connection asks for its commit point; a render thread merges the claimed batches (no database access)
into a small bounded queue; N connection threads talk SMTP.

Other Django backends (anymail providers, locmem) have no such split: a row is committed just before the call.
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import itertools
import logging
import os
import queue
import re
import smtplib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr, make_msgid
from quopri import encodestring
from typing import Any, Protocol

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, mailers
from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend
from django.db import connection, transaction
from django.utils import timezone

from loopline.platform.queues import claim_due

from .models import Delivery

logger = logging.getLogger("loopline.emails")

CRLF = b"\r\n"
_DOT_RE = re.compile(rb"(?m)^\.")


def setting(name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return type(default)(value) if default is not None else value


def bounce_domain() -> str:
    return str(setting("LOOPLINE_BOUNCE_DOMAIN", "bounces.loopline.localhost"))


# --- Messages -------------------------------------------------------------------------------------------------


@dataclass
class Outgoing:
    """One rendered message for one ledger row."""

    delivery_id: int
    envelope_from: str
    to: str
    from_header: str
    subject: str
    html: str
    text: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    reply_to: str = ""
    prospect_id: int | None = None
    raw: bytes = b""
    owner: str = ""  # the ledger claim this message belongs to (set by the engine)


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("header values cannot contain line breaks")
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode()


def _b64(text: str) -> bytes:
    data = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return CRLF.join([data[i : i + 76] for i in range(0, len(data), 76)]) + CRLF


def _qp(text: str) -> bytes:
    data = encodestring(text.encode("utf-8"))
    return data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)


_BOUNDARY_SALT = uuid.uuid4().hex[:12]
_boundary_count = itertools.count()
_date_cache: tuple[int, str] = (0, "")


def _date_header() -> str:
    """The Date header, formatted once per second (formatting costs more than the rest of the header block)."""
    global _date_cache
    now = time.time()
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(dt.datetime.fromtimestamp(second, dt.UTC)))
    return _date_cache[1]


def build_raw(msg: Outgoing, *, domain: str) -> bytes:
    """RFC 5322 multipart/alternative bytes (text first, then HTML), CRLF, text quoted-printable and HTML base64
    (the fastest 7-bit encoding for long generated lines): 7-bit clean and stable for DKIM signing by the relay."""
    # "=_" never occurs in quoted-printable or base64 output, so the boundary needs no fresh randomness per message.
    boundary = f"=_ll_{_BOUNDARY_SALT}_{msg.delivery_id}_{next(_boundary_count)}"
    lines = [
        f"From: {msg.from_header}",
        f"To: {msg.to}",
        f"Subject: {_header_value(msg.subject)}",
        f"Date: {_date_header()}",
        f"Message-ID: {make_msgid(str(msg.delivery_id), domain=domain)}",
        "MIME-Version: 1.0",
    ]
    if msg.reply_to:
        lines.append(f"Reply-To: {msg.reply_to}")
    for name, value in msg.headers:
        lines.append(f"{name}: {_header_value(value)}")
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = "\r\n".join(lines).encode("utf-8") + CRLF + CRLF
    part = (
        f'--{boundary}\r\nContent-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode()
    part_html = (
        f'\r\n--{boundary}\r\nContent-Type: text/html; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    return head + part + _qp(msg.text) + part_html + _b64(msg.html) + f"--{boundary}--\r\n".encode()


def django_message(msg: Outgoing) -> EmailMultiAlternatives:
    email = EmailMultiAlternatives(
        msg.subject,
        msg.text,
        msg.from_header,
        [msg.to],
        headers=dict(msg.headers),
        reply_to=[msg.reply_to] if msg.reply_to else None,
    )
    email.attach_alternative(msg.html, "text/html")
    return email


# --- Results --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    delivery_id: int
    outcome: str  # sent | failed | bounced | retry
    code: int = 0
    detail: str = ""
    prospect_id: int | None = None


# --- SMTP connection pool -----------------------------------------------------------------------------------------

# Addresses that need no quoting go on the wire as they are; anything else takes smtplib's parser.
_PLAIN_ADDRESS_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


def _command(conn: smtplib.SMTP, verb: str, address: str) -> tuple[int, bytes]:
    if not _PLAIN_ADDRESS_RE.match(address):
        return conn.mail(address) if verb == "mail" else conn.rcpt(address)
    conn.putcmd(verb, f"{'FROM' if verb == 'mail' else 'TO'}:<{address}>")
    return conn.getreply()


class _Conn(threading.Thread):
    """One pooled SMTP connection in its own thread; phase 1 up to the body, phase 2 (the final dot) on command."""

    def __init__(self, pool: SmtpPool, index: int):
        super().__init__(daemon=True, name=f"smtp-{index}")
        self.pool = pool
        self.backend: DjangoSMTPBackend | None = None
        self.go: queue.Queue[bool] = queue.Queue()
        self.sent_in_connection = 0

    def _open(self) -> smtplib.SMTP:
        if self.backend is None or self.backend.connection is None:
            self.backend = self.pool.make_backend()
            self.backend.open()
            assert self.backend.connection is not None
            self.backend.connection.ehlo_or_helo_if_needed()
            sock = self.backend.connection.sock
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # The final dot is a tiny write after the body: with Nagle's algorithm it would wait for the
                # server's delayed ACK (tens of milliseconds) on every message.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sent_in_connection = 0
        assert self.backend.connection is not None
        return self.backend.connection

    def _drop(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; nothing to do
                self.backend.close()
            self.backend = None

    def run(self) -> None:
        while True:
            msg = self.pool.jobs.get()
            if msg is None:
                self._drop()
                return
            try:
                self._send(msg)
            except Exception as exc:  # SMTP, socket, a malformed address: the thread must go on
                # Before the commit point the row stays queued and is retried; after it, it stays handed over.
                self._drop()
                self.pool.events.put(
                    Result(
                        msg.delivery_id,
                        "retry",
                        detail=f"{type(exc).__name__}: {exc}"[:300],
                        prospect_id=msg.prospect_id,
                    )
                )

    def _send(self, msg: Outgoing) -> None:
        conn = self._open()
        code, resp = _command(conn, "mail", msg.envelope_from)
        if code != 250:
            conn.rset()
            self._fail(msg, code, resp)
            return
        code, resp = _command(conn, "rcpt", msg.to)
        if code not in (250, 251):
            conn.rset()
            self._fail(msg, code, resp)
            return
        conn.putcmd("data")
        code, resp = conn.getreply()
        if code != 354:
            conn.rset()
            self._fail(msg, code, resp)
            return
        body = msg.raw
        if body.startswith(b".") or b"\n." in body:  # rare (base64 never has a dot): skip the regex otherwise
            body = _DOT_RE.sub(b"..", body)
        if not body.endswith(CRLF):
            body += CRLF
        conn.send(body)
        # Ready: the server has the whole message but the final dot. The engine commits, then writes the dot.
        self.pool.events.put((msg, self))
        committed = self.go.get()
        if not committed:
            # The row is not ours any more (lease lost): abandon this DATA by dropping the connection.
            self._drop()
            return
        code, resp = conn.getreply()
        self.sent_in_connection += 1
        if code == 250:
            self.pool.events.put(Result(msg.delivery_id, "sent", code, "", msg.prospect_id))
        else:
            self._fail(msg, code, resp, after_data=True)

    def _fail(self, msg: Outgoing, code: int, resp: bytes | str, *, after_data: bool = False) -> None:
        text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
        if 500 <= code < 600:
            outcome = "bounced"  # permanent failure at SMTP time: a hard bounce ([M26])
        elif after_data:
            outcome = "failed"  # a temporary failure after the commit point: never retried (no duplicates)
        else:
            outcome = "retry"
        self.pool.events.put(Result(msg.delivery_id, outcome, code, f"{code} {text}"[:300], msg.prospect_id))

    def write_dot(self) -> None:
        assert self.backend is not None and self.backend.connection is not None
        sock = self.backend.connection.sock
        assert sock is not None
        sock.sendall(b"." + CRLF)


class SmtpPool:
    """N SMTP connections (Django SMTP backend instances from MAILERS) working in parallel. ``events`` carries both
    messages waiting for the commit point ``(Outgoing, _Conn)`` and finished ``Result``s, so the engine wakes on
    either with one blocking get."""

    def __init__(self, make_backend: Callable[[], DjangoSMTPBackend], size: int):
        self.make_backend = make_backend
        # Bounded: the renderer stays only a little ahead of the connections.
        self.jobs: queue.Queue[Outgoing | None] = queue.Queue(maxsize=max(1, size))
        self.events: queue.Queue[tuple[Outgoing, _Conn] | Result] = queue.Queue()
        self.threads = [_Conn(self, i) for i in range(max(1, size))]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for _ in self.threads:
            with contextlib.suppress(queue.Full):
                self.jobs.put(None, timeout=10)
        for t in self.threads:
            t.join(timeout=10)


# --- The engine -------------------------------------------------------------------------------------------------


class RateLimiter:
    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_at = time.monotonic()

    def delay(self) -> float:
        """Seconds until the next message may go (0: now)."""
        return max(0.0, self.next_at - time.monotonic()) if self.interval else 0.0

    def take(self) -> None:
        if self.interval:
            self.next_at = max(self.next_at, time.monotonic()) + self.interval

    def wait(self) -> None:
        if self.interval:
            time.sleep(self.delay())
            self.take()


@dataclass
class Progress:
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    retried: int = 0
    skipped: int = 0

    def count(self, result: Result) -> None:
        if result.outcome == "sent":
            self.sent += 1
        elif result.outcome == "bounced":
            self.bounced += 1
        elif result.outcome == "failed":
            self.failed += 1
        elif result.outcome == "retry":
            self.retried += 1
        elif result.outcome == "skipped":
            self.skipped += 1


# A renderer loads what a batch of claimed rows needs (one query per kind of data) and then yields one rendered
# message (or an early result: skipped, failed to render) per row, lazily, so the engine can interleave rendering
# with the commit point of messages already on the wire.
RenderBatch = Callable[[list["LedgerRow"]], Iterator[Outgoing | Result]]


class LedgerRow(Protocol):
    """What rendering needs of a claimed ledger row (a ``Delivery``, or the lighter ``Claimed``)."""

    @property
    def pk(self) -> Any: ...
    @property
    def prospect_id(self) -> int | None: ...
    @property
    def address(self) -> str: ...


@dataclass(slots=True, frozen=True)
class Claimed:
    """A claimed row as the engine needs it: building a Django model instance per row costs more than the claim."""

    pk: int
    prospect_id: int | None
    address: str


FlushResults = Callable[[list[Result]], None]


def _commit(ids: list[int], owner: str) -> set[int]:
    """Mark rows COMMITTED if they are still ours; returns the ids we may complete."""
    # The commit point of every message, while its connection waits: one statement (its own transaction), written
    # as SQL because building the same ORM query costs more than running it.
    table = connection.ops.quote_name(Delivery._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, next_run_at = NULL, locked_until = NULL "
            f"WHERE owner = %s AND status = %s AND id IN ({marks})",
            [Delivery.Status.COMMITTED.value, owner, Delivery.Status.QUEUED.value, *ids],
        )
        n = cursor.rowcount
    if n == len(ids):
        return set(ids)
    return set(
        Delivery.objects.filter(pk__in=ids, owner=owner, status=Delivery.Status.COMMITTED).values_list(
            "pk", flat=True
        )
    )


def commit_and_complete(ids: list[int], owner: str, complete: Callable[[set[int]], None]) -> set[int]:
    """The commit point, then ``complete(ours)`` — writing the final dots of the rows that are still ours.

    On PostgreSQL the dots go out between sending ``COMMIT`` and reading its reply (:func:`_commit_pipelined`);
    elsewhere (SQLite commits locally, in microseconds) after the commit returns."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        ours = _commit(ids, owner)
        complete(ours)
        return ours
    return _commit_pipelined(ids, owner, complete)


def _commit_pipelined(ids: list[int], owner: str, complete: Callable[[set[int]], None]) -> set[int]:
    """A SIGKILL between a commit becoming durable and the final dots leaves committed messages the server never
    completed: lost. Waiting for the COMMIT's reply before writing the dots made that window a database round trip.
    Here the rows are marked (and locked) in a transaction, COMMIT is sent, the dots are written, and only then is the
    reply read: the window is the few microseconds between two writes. If the COMMIT itself failed (a database server
    failure, not a killed worker) the messages were sent but stay queued: sent again later, never lost — the trade
    docs/decisions/0004 already makes."""
    import select

    from django.db import DatabaseError
    from psycopg import pq

    table = connection.ops.quote_name(Delivery._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        try:
            cursor.execute(
                f"UPDATE {table} SET status = %s, next_run_at = NULL, locked_until = NULL "
                f"WHERE owner = %s AND status = %s AND id IN ({marks}) RETURNING id",
                [Delivery.Status.COMMITTED.value, owner, Delivery.Status.QUEUED.value, *ids],
            )
            ours = {int(row[0]) for row in cursor.fetchall()}
        except BaseException:
            with contextlib.suppress(Exception):  # a broken connection has no transaction left to roll back
                cursor.execute("ROLLBACK")
            raise
    pgconn = connection.connection.pgconn

    def wait(writing: bool) -> None:
        fd = pgconn.socket
        select.select([] if writing else [fd], [fd] if writing else [], [], 30.0)

    pgconn.send_query(b"COMMIT")
    while pgconn.flush():  # 1 while bytes remain (a non-blocking connection)
        wait(writing=True)
    complete(ours)
    failure = ""
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            wait(writing=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status != pq.ExecStatus.COMMAND_OK:
            failure = (result.error_message or b"").decode("utf-8", "replace") or "COMMIT failed"
    if failure:
        raise DatabaseError(failure)
    return ours


def claim(send_id: int, limit: int, lease_seconds: float) -> tuple[list[LedgerRow], str]:
    """Lease up to ``limit`` due rows of the send under a fresh owner token (``claim_due``'s semantics: oldest due
    first, attempts + 1, safe with concurrent workers)."""
    if connection.vendor == "postgresql" or (connection.vendor == "sqlite" and _sqlite_returning()):
        return _claim_returning(send_id, limit, lease_seconds)
    rows = claim_due(
        Delivery.objects.filter(send_id=send_id, status=Delivery.Status.QUEUED),
        limit=limit,
        lease_seconds=lease_seconds,
    )
    if not rows:
        return [], ""
    owner = uuid.uuid4().hex
    Delivery.objects.filter(pk__in=[r.pk for r in rows], locked_until=rows[0].locked_until).update(
        owner=owner
    )
    claimed: list[LedgerRow] = list(rows)
    return claimed, owner


def _sqlite_returning() -> bool:
    import sqlite3

    return sqlite3.sqlite_version_info >= (3, 35, 0)


def _claim_returning(send_id: int, limit: int, lease_seconds: float) -> tuple[list[LedgerRow], str]:
    # One statement instead of a transaction of three and full model rows: the engine claims while every
    # connection waits, so the claim's cost is paid by all of them.
    now = timezone.now()
    meta = Delivery._meta
    qn = connection.ops.quote_name
    col = {name: qn(str(meta.get_field(name).column))  # type: ignore[union-attr]
           for name in ("send", "status", "next_run_at", "locked_until", "attempts", "owner", "prospect", "address")}
    stamp = meta.get_field("locked_until").get_db_prep_value  # type: ignore[union-attr]
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    table, pk = qn(meta.db_table), qn(str(meta.pk.column))  # type: ignore[union-attr]
    owner = uuid.uuid4().hex
    until = now + dt.timedelta(seconds=lease_seconds)
    sql = (
        f"UPDATE {table} SET {col['locked_until']} = %s, {col['attempts']} = {col['attempts']} + 1, "
        f"{col['owner']} = %s WHERE {pk} IN (SELECT {pk} FROM {table} WHERE {col['send']} = %s "
        f"AND {col['status']} = %s AND {col['next_run_at']} IS NOT NULL AND {col['next_run_at']} <= %s "
        f"AND ({col['locked_until']} IS NULL OR {col['locked_until']} <= %s) "
        f"ORDER BY {col['next_run_at']}, {pk} LIMIT %s{lock}) "
        f"RETURNING {pk}, {col['prospect']}, {col['address']}"
    )
    params = [stamp(until, connection), owner, send_id, Delivery.Status.QUEUED.value, stamp(now, connection),
              stamp(now, connection), limit]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = sorted(cursor.fetchall())
    if not found:
        return [], ""
    return [Claimed(pk_, pid, address) for pk_, pid, address in found], owner


def is_smtp_backend(backend: Any) -> bool:
    return isinstance(backend, DjangoSMTPBackend)


def run_engine(
    send_id: int,
    render_batch: RenderBatch,
    flush: FlushResults,
    *,
    connections: int | None = None,
    batch_size: int | None = None,
    rate: float | None = None,
    lease_seconds: float | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Progress:
    """Send every due ledger row of ``send_id``; returns what this worker did. Safe to run in several workers."""
    connections = connections or int(setting("LOOPLINE_EMAIL_CONNECTIONS", 4))
    batch_size = batch_size or int(setting("LOOPLINE_EMAIL_BATCH", 250))
    lease_seconds = lease_seconds or float(setting("LOOPLINE_EMAIL_LEASE_SECONDS", 60.0))
    limiter = RateLimiter(rate if rate is not None else float(setting("LOOPLINE_EMAIL_RATE_PER_S", 0.0)))
    started = time.monotonic()

    def out_of_time() -> bool:
        return should_stop() or (max_seconds is not None and time.monotonic() - started > max_seconds)

    probe = mailers["default"]
    if not is_smtp_backend(probe):
        return _run_generic(
            send_id, probe, render_batch, flush, batch_size, lease_seconds, limiter, out_of_time
        )
    from . import async_engine

    if async_engine.usable(probe):
        return async_engine.LoopEngine(
            send_id, probe, render_batch, flush, connections=connections, batch_size=batch_size,
            lease_seconds=lease_seconds, limiter=limiter, out_of_time=out_of_time,
        ).run()
    return _run_smtp(
        send_id, render_batch, flush, connections, batch_size, lease_seconds, limiter, out_of_time
    )


def _run_generic(
    send_id: int,
    backend: Any,
    render_batch: RenderBatch,
    flush: FlushResults,
    batch_size: int,
    lease_seconds: float,
    limiter: RateLimiter,
    out_of_time: Callable[[], bool],
) -> Progress:
    """Any other Django backend: commit, then hand over, one small batch at a time (at most once)."""
    progress = Progress()
    while not out_of_time():
        rows, owner = claim(send_id, min(batch_size, 50), lease_seconds)
        if not rows:
            break
        results: list[Result] = []
        messages: list[Outgoing] = []
        for item in render_batch(rows):
            if isinstance(item, Result):
                results.append(item)
            else:
                messages.append(item)
        owned = _commit([m.delivery_id for m in messages], owner) if messages else set()
        for m in messages:
            if m.delivery_id not in owned:
                continue
            limiter.wait()
            try:
                backend.send_messages([django_message(m)])
                results.append(Result(m.delivery_id, "sent", 250, "", m.prospect_id))
            except Exception as exc:  # provider errors vary; never resend after the commit
                results.append(
                    Result(m.delivery_id, "failed", 0, f"{type(exc).__name__}: {exc}"[:300], m.prospect_id)
                )
        for r in results:
            progress.count(r)
        flush(results)
    return progress


# A connection that reaches the commit point waits this long for others to reach it too, so one ledger write
# covers several messages (several times fewer writes for half a millisecond of latency).
_COMMIT_GATHER_S = 0.0005


class _RenderThread(threading.Thread):
    """Renders claimed batches (their database reads are done by the engine thread) and feeds the connections, so
    the engine thread is free to answer every commit point at once."""

    def __init__(self, pool: SmtpPool, limiter: RateLimiter):
        super().__init__(daemon=True, name="email-render")
        self.pool = pool
        self.limiter = limiter
        self.batches: queue.Queue[tuple[Iterator[Outgoing | Result], str] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        # Held while one message renders, and by the engine from its commit to the last final dot: rendering must
        # not hold the GIL when the commit returns, or the window in which a crash loses messages (committed, dot
        # not yet written) would grow from microseconds to a GIL switch interval or an OS time slice.
        self.gate = threading.Lock()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self.batches.get()
                if batch is None:
                    return
                items, owner = batch
                while True:
                    with self.gate:
                        item = next(items, None)
                    if item is None:
                        break
                    if isinstance(item, Result):
                        self.pool.events.put(item)
                        continue
                    item.owner = owner
                    self.limiter.wait()
                    while not self.stopping.is_set():
                        try:
                            # Bounded: waits while the connections are busy.
                            self.pool.jobs.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self.stopping.is_set():
                        return
        except BaseException as exc:  # handed to the engine thread, which raises it
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            self.batches.get_nowait()
        with contextlib.suppress(queue.Full):
            self.batches.put_nowait(None)
        self.join(timeout=10)


def _relax_commit_durability() -> bool:
    """On PostgreSQL, this worker's commits stop waiting for the WAL flush (``synchronous_commit = off``), as SQLite
    commits already do here (``synchronous=NORMAL``). A killed worker loses nothing by it — the database server
    completes what it received — but the commit point's wait shrinks from a disk flush to a round trip, and with it
    the window in which a crash leaves a committed message without its final dot. Only a crash of the database server
    itself can lose the last few hundred milliseconds of ledger marks: those messages are then sent again (at least
    once), never dropped. See docs/decisions/0004-email-commit-point-durability.md."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return False
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    return True


def _run_smtp(
    send_id: int,
    render_batch: RenderBatch,
    flush: FlushResults,
    connections: int,
    batch_size: int,
    lease_seconds: float,
    limiter: RateLimiter,
    out_of_time: Callable[[], bool],
) -> Progress:
    """This thread owns the database (claims, the commit point, ledger updates); one thread renders; ``connections``
    threads talk SMTP. A connection waiting for its final dot is idle, so this thread mostly sleeps on the event
    queue and answers each commit point as soon as it is asked."""
    progress = Progress()
    relaxed = _relax_commit_durability()
    gather_s = float(setting("LOOPLINE_EMAIL_COMMIT_GATHER_MS", _COMMIT_GATHER_S * 1000)) / 1000
    # The connection threads wake on every SMTP reply; with the default 5 ms GIL switch interval they would queue
    # behind the rendering thread for milliseconds per reply.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0002))
    pool = SmtpPool(lambda: mailers.create_connection("default"), connections)  # type: ignore[arg-type,return-value]
    renderer = _RenderThread(pool, limiter)
    renderer.start()
    outstanding = 0  # claimed rows handed to the renderer and not finished yet
    leases: dict[str, float] = {}  # owner -> monotonic time the lease was last renewed
    exhausted = False
    pending_results: list[Result] = []
    waiting: list[tuple[Outgoing, _Conn] | Result] = []
    last_flush = time.monotonic()
    clean = False

    def finished(r: Result) -> None:
        nonlocal outstanding
        outstanding -= 1
        progress.count(r)
        pending_results.append(r)

    try:
        while True:
            if renderer.error is not None:
                raise RuntimeError("rendering failed") from renderer.error
            busy = False
            # 1. The commit point for every message waiting on the wire, and finished results.
            events, waiting = waiting, []
            while True:
                try:
                    events.append(pool.events.get_nowait())
                except queue.Empty:
                    break
            if events:
                busy = True
                ready = [e for e in events if not isinstance(e, Result)]
                if ready and len(ready) < connections // 2:
                    deadline = time.monotonic() + gather_s
                    while len(ready) < connections // 2:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            e = pool.events.get(timeout=left)
                        except queue.Empty:
                            break
                        events.append(e)
                        if not isinstance(e, Result):
                            ready.append(e)
                if ready:
                    by_owner: dict[str, list[int]] = {}
                    for m, _conn in ready:
                        by_owner.setdefault(m.owner, []).append(m.delivery_id)
                    committed: set[int] = set()
                    with renderer.gate:
                        for owner, ids in by_owner.items():
                            committed |= _commit(ids, owner)
                        # Commit point passed: complete the messages on the wire right away.
                        for m, conn in ready:
                            if m.delivery_id in committed:
                                # A broken connection shows when its thread reads the reply.
                                with contextlib.suppress(OSError):
                                    conn.write_dot()
                    for m, conn in ready:
                        conn.go.put(m.delivery_id in committed)
                        if m.delivery_id not in committed:
                            outstanding -= 1  # not ours any more: another worker has it
                for e in events:
                    if isinstance(e, Result):
                        finished(e)
            # 2. Keep one claimed batch waiting for the renderer (its reads happen here, on this thread).
            if not exhausted and not renderer.batches.full():
                rows, owner = ([], "") if out_of_time() else claim(send_id, batch_size, lease_seconds)
                if rows:
                    leases[owner] = time.monotonic()
                    outstanding += len(rows)
                    renderer.batches.put((render_batch(rows), owner))
                    busy = True
                else:
                    exhausted = True
            # 3. Keep our claims alive while we work through them (a slow machine must not lose its leases).
            now_m = time.monotonic()
            for owner, renewed in list(leases.items()):
                if now_m - renewed > lease_seconds / 3:
                    still = Delivery.objects.filter(owner=owner, status=Delivery.Status.QUEUED).update(
                        locked_until=timezone.now() + dt.timedelta(seconds=lease_seconds)
                    )
                    if still:
                        leases[owner] = now_m
                    else:
                        del leases[owner]
            # 4. Ledger updates for finished messages, in batches.
            if len(pending_results) >= 200 or (pending_results and now_m - last_flush > 0.5):
                flush(pending_results)
                pending_results.clear()
                last_flush = time.monotonic()
            if exhausted and outstanding <= 0:
                break
            if not busy:
                with contextlib.suppress(queue.Empty):
                    waiting.append(pool.events.get(timeout=0.05))
        clean = True
    finally:
        sys.setswitchinterval(switch_interval)
        if relaxed:
            with contextlib.suppress(Exception), connection.cursor() as cursor:  # a broken connection resets anyway
                cursor.execute("RESET synchronous_commit")
        renderer.stop()
        if not clean:
            # Messages not yet on the wire stay queued for the next worker; connections waiting for the commit
            # point abandon their DATA.
            with contextlib.suppress(queue.Empty):
                while True:
                    pool.jobs.get_nowait()
            for t in pool.threads:
                t.go.put(False)
        pool.close()
        if pending_results:
            flush(pending_results)
            pending_results.clear()
    return progress


def now() -> dt.datetime:
    return timezone.now()


def socket_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def from_header(name: str, address: str) -> str:
    return formataddr((name, address)) if name else address
