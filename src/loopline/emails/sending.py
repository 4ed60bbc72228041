"""The send engine: claim ledger rows, render, hand messages to the mail server exactly once ([M29], [M30]).

Exactly once across crashes, without a duplicate: over SMTP a message exists for the server only once it receives the
final "." of DATA. Each connection thread sends MAIL, RCPT, DATA and the body, then waits; the main thread marks the
waiting rows COMMITTED in one transaction (fenced by the claim's owner token) and only then writes the final "." on
each socket. A worker killed before that commit leaves rows QUEUED whose messages were never completed (the server
discards them), so they are sent again by the next worker; after the commit a row is never sent again.
The only window left is the few microseconds between the commit and the "." syscalls.

Other Django backends (anymail providers, locmem) have no such split: a row is committed just before the call.
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr, make_msgid
from quopri import encodestring
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, mailers
from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend
from django.db import transaction
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


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("header values cannot contain line breaks")
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode()


def _b64(text: str) -> bytes:
    data = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return CRLF.join([data[i:i + 76] for i in range(0, len(data), 76)]) + CRLF


def _qp(text: str) -> bytes:
    data = encodestring(text.encode("utf-8"))
    return data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)


def build_raw(msg: Outgoing, *, domain: str) -> bytes:
    """RFC 5322 multipart/alternative bytes (text first, then HTML), CRLF, text quoted-printable and HTML base64
    (the fastest 7-bit encoding for long generated lines): 7-bit clean and stable for DKIM signing by the relay."""
    boundary = "=_ll_" + uuid.uuid4().hex
    lines = [
        f"From: {msg.from_header}",
        f"To: {msg.to}",
        f"Subject: {_header_value(msg.subject)}",
        f"Date: {format_datetime(timezone.now())}",
        f"Message-ID: {make_msgid(str(msg.delivery_id), domain=domain)}",
        "MIME-Version: 1.0",
    ]
    if msg.reply_to:
        lines.append(f"Reply-To: {msg.reply_to}")
    for name, value in msg.headers:
        lines.append(f"{name}: {_header_value(value)}")
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = "\r\n".join(lines).encode("utf-8") + CRLF + CRLF
    part = (f"--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode()
    part_html = (f"\r\n--{boundary}\r\nContent-Type: text/html; charset=\"utf-8\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    return head + part + _qp(msg.text) + part_html + _b64(msg.html) + f"--{boundary}--\r\n".encode()


def django_message(msg: Outgoing) -> EmailMultiAlternatives:
    email = EmailMultiAlternatives(msg.subject, msg.text, msg.from_header, [msg.to], headers=dict(msg.headers),
                                   reply_to=[msg.reply_to] if msg.reply_to else None)
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
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                self.pool.results.put(Result(msg.delivery_id, "retry", detail=f"{type(exc).__name__}: {exc}"[:300],
                                             prospect_id=msg.prospect_id))

    def _send(self, msg: Outgoing) -> None:
        conn = self._open()
        code, resp = conn.mail(msg.envelope_from)
        if code != 250:
            conn.rset()
            self._fail(msg, code, resp)
            return
        code, resp = conn.rcpt(msg.to)
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
        body = _DOT_RE.sub(b"..", msg.raw)
        if not body.endswith(CRLF):
            body += CRLF
        conn.send(body)
        # Ready: the server has the whole message but the final dot. The main thread commits, then writes the dot.
        self.pool.ready.put((msg, self))
        committed = self.go.get()
        if not committed:
            # The row is not ours any more (lease lost): abandon this DATA by dropping the connection.
            self._drop()
            return
        code, resp = conn.getreply()
        self.sent_in_connection += 1
        if code == 250:
            self.pool.results.put(Result(msg.delivery_id, "sent", code, "", msg.prospect_id))
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
        self.pool.results.put(Result(msg.delivery_id, outcome, code, f"{code} {text}"[:300], msg.prospect_id))

    def write_dot(self) -> None:
        assert self.backend is not None and self.backend.connection is not None
        sock = self.backend.connection.sock
        assert sock is not None
        sock.sendall(b"." + CRLF)


class SmtpPool:
    """N SMTP connections (Django SMTP backend instances from MAILERS) working in parallel."""

    def __init__(self, make_backend: Callable[[], DjangoSMTPBackend], size: int):
        self.make_backend = make_backend
        self.jobs: queue.Queue[Outgoing | None] = queue.Queue()
        self.ready: queue.Queue[tuple[Outgoing, _Conn]] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.threads = [_Conn(self, i) for i in range(max(1, size))]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout=10)


# --- The engine -------------------------------------------------------------------------------------------------


class RateLimiter:
    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


@dataclass
class Progress:
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    retried: int = 0
    skipped: int = 0


RenderBatch = Callable[[list[Delivery]], tuple[list[Outgoing], list[Result]]]
FlushResults = Callable[[list[Result]], None]


def _commit(ids: list[int], owner: str) -> set[int]:
    """Mark rows COMMITTED if they are still ours; returns the ids we may complete."""
    with transaction.atomic():
        n = Delivery.objects.filter(pk__in=ids, owner=owner, status=Delivery.Status.QUEUED).update(
            status=Delivery.Status.COMMITTED, next_run_at=None, locked_until=None)
        if n == len(ids):
            return set(ids)
        return set(Delivery.objects.filter(pk__in=ids, owner=owner, status=Delivery.Status.COMMITTED)
                   .values_list("pk", flat=True))


def claim(send_id: int, limit: int, lease_seconds: float) -> tuple[list[Delivery], str]:
    rows = claim_due(Delivery.objects.filter(send_id=send_id, status=Delivery.Status.QUEUED), limit=limit,
                     lease_seconds=lease_seconds)
    if not rows:
        return [], ""
    owner = uuid.uuid4().hex
    Delivery.objects.filter(pk__in=[r.pk for r in rows], locked_until=rows[0].locked_until).update(owner=owner)
    return rows, owner


def is_smtp_backend(backend: Any) -> bool:
    return isinstance(backend, DjangoSMTPBackend)


def run_engine(send_id: int, render_batch: RenderBatch, flush: FlushResults, *, connections: int | None = None,
               batch_size: int | None = None, rate: float | None = None, lease_seconds: float | None = None,
               max_seconds: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> Progress:
    """Send every due ledger row of ``send_id``; returns what this worker did. Safe to run in several workers."""
    connections = connections or int(setting("LOOPLINE_EMAIL_CONNECTIONS", 4))
    batch_size = batch_size or int(setting("LOOPLINE_EMAIL_BATCH", 250))
    lease_seconds = lease_seconds or float(setting("LOOPLINE_EMAIL_LEASE_SECONDS", 60.0))
    limiter = RateLimiter(rate if rate is not None else float(setting("LOOPLINE_EMAIL_RATE_PER_S", 0.0)))
    probe = mailers["default"]
    progress = Progress()
    started = time.monotonic()
    pending_results: list[Result] = []

    def account(results: Iterable[Result]) -> None:
        for r in results:
            pending_results.append(r)
            if r.outcome == "sent":
                progress.sent += 1
            elif r.outcome == "bounced":
                progress.bounced += 1
            elif r.outcome == "failed":
                progress.failed += 1
            elif r.outcome == "retry":
                progress.retried += 1
            elif r.outcome == "skipped":
                progress.skipped += 1

    def out_of_time() -> bool:
        return should_stop() or (max_seconds is not None and time.monotonic() - started > max_seconds)

    if not is_smtp_backend(probe):
        # Generic Django backend: commit, then hand over, one small batch at a time.
        while not out_of_time():
            rows, owner = claim(send_id, min(batch_size, 50), lease_seconds)
            if not rows:
                break
            messages, early = render_batch(rows)
            account(early)
            owned = _commit([m.delivery_id for m in messages], owner) if messages else set()
            for m in messages:
                if m.delivery_id not in owned:
                    continue
                limiter.wait()
                try:
                    probe.send_messages([django_message(m)])
                    account([Result(m.delivery_id, "sent", 250, "", m.prospect_id)])
                except Exception as exc:  # provider errors vary; never resend after the commit
                    account([Result(m.delivery_id, "failed", 0, f"{type(exc).__name__}: {exc}"[:300],
                                    m.prospect_id)])
            flush(pending_results)
            pending_results.clear()
        return progress

    # The connection threads wake on every SMTP reply; with the default 5 ms GIL switch interval they would queue
    # behind the rendering main thread for milliseconds per reply.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0002))
    pool = SmtpPool(lambda: mailers.create_connection("default"), connections)  # type: ignore[arg-type,return-value]
    backlog: list[Outgoing] = []
    in_flight = 0
    owners: dict[int, str] = {}
    pending_rows: list[tuple[Delivery, str]] = []
    render_chunk = max(16, connections * 2)
    leases: dict[str, float] = {}  # owner -> monotonic time the lease was last renewed
    exhausted = False
    last_flush = time.monotonic()
    try:
        while True:
            if not backlog and not pending_rows and not exhausted and not out_of_time():
                rows, owner = claim(send_id, batch_size, lease_seconds)
                if not rows:
                    exhausted = True
                else:
                    leases[owner] = time.monotonic()
                    pending_rows.extend((row, owner) for row in rows)
            # Render a small slice at a time so the connections never wait for a whole batch to render.
            if pending_rows and len(backlog) < connections * 2:
                chunk, pending_rows[:] = pending_rows[:render_chunk], pending_rows[render_chunk:]
                messages, early = render_batch([row for row, _ in chunk])
                account(early)
                chunk_owner = {row.pk: owner for row, owner in chunk}
                for m in messages:
                    if m.delivery_id not in owners:  # never the same row twice in one worker
                        owners[m.delivery_id] = chunk_owner[m.delivery_id]
                        backlog.append(m)
            # Keep our claims alive while we work through them (a slow machine must not lose its leases).
            now_m = time.monotonic()
            for owner, renewed in list(leases.items()):
                if now_m - renewed > lease_seconds / 3:
                    if owner in owners.values() or any(o == owner for _, o in pending_rows):
                        Delivery.objects.filter(owner=owner, status=Delivery.Status.QUEUED).update(
                            locked_until=timezone.now() + dt.timedelta(seconds=lease_seconds))
                        leases[owner] = now_m
                    else:
                        del leases[owner]
            # Keep every connection busy with one message and one waiting.
            while backlog and in_flight < connections * 2:
                limiter.wait()
                pool.jobs.put(backlog.pop(0))
                in_flight += 1
            if in_flight == 0:
                if backlog or pending_rows:
                    continue
                if exhausted or out_of_time():
                    break
                continue
            # Collect what is ready for the commit point, and finished results.
            ready: list[tuple[Outgoing, _Conn]] = []
            with contextlib.suppress(queue.Empty):
                ready.append(pool.ready.get(timeout=0.002))
            while True:
                try:
                    ready.append(pool.ready.get_nowait())
                except queue.Empty:
                    break
            if ready:
                by_owner: dict[str, list[int]] = {}
                for m, _conn in ready:
                    by_owner.setdefault(owners.get(m.delivery_id, ""), []).append(m.delivery_id)
                committed: set[int] = set()
                for owner, ids in by_owner.items():
                    if owner:
                        committed |= _commit(ids, owner)
                # Commit point passed: complete the messages on the wire right away.
                for m, conn in ready:
                    if m.delivery_id in committed:
                        # A broken connection shows in the thread when it reads the reply.
                        with contextlib.suppress(OSError):
                            conn.write_dot()
                for m, conn in ready:
                    conn.go.put(m.delivery_id in committed)
                    if m.delivery_id not in committed:
                        in_flight -= 1
                        owners.pop(m.delivery_id, None)
            while True:
                try:
                    r = pool.results.get_nowait()
                except queue.Empty:
                    break
                in_flight -= 1
                owners.pop(r.delivery_id, None)
                account([r])
            if len(pending_results) >= 200 or (pending_results and time.monotonic() - last_flush > 0.5):
                flush(pending_results)
                pending_results.clear()
                last_flush = time.monotonic()
    finally:
        sys.setswitchinterval(switch_interval)
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
